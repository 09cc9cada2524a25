import { pino } from 'pino';

export const log = pino({ level: process.env.NIXREG_LOG_LEVEL ?? 'info', base: undefined });
export type { Logger } from 'pino';
