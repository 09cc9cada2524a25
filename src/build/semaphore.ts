// Room: build, shared by all of it: imports nothing else of build. May import src/blobs and src/oci;
// never src/registry.
/**
 * A counting semaphore: at most `size` holders at once, the rest wait in FIFO order.
 * Bounds concurrent builds and evaluations (builder.ts, evaluate.ts) and the process-wide gzip
 * compressions (assembly/gzip.ts), whose slot is taken and given back at different places.
 */
export class Semaphore {
  private readonly waiting: (() => void)[] = [];
  constructor(private free: number) {}

  async take(): Promise<void> {
    if (this.free > 0) { this.free--; return; }
    await new Promise<void>((r) => this.waiting.push(r));
  }

  give(): void {
    const next = this.waiting.shift();
    if (next) next(); else this.free++;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.take();
    try { return await fn(); } finally { this.give(); }
  }

  get queued(): number { return this.waiting.length; }
}
