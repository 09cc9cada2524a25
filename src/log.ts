// The process's logger: pino, JSON lines on stdout, level from NIXREG_LOG_LEVEL.
//
// Composition root: may import every room; no room imports it.
import { pino } from 'pino';

export const log = pino({ level: process.env.NIXREG_LOG_LEVEL ?? 'info', base: undefined });
export type { Logger } from 'pino';
