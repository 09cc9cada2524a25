// Room: blobs. May import src/oci; never src/build or src/registry.
/**
 * An in-process lock per key. nixreg is one process owning its data directory, so
 * serialising the filesystem half of blob commits and deletes per digest is enough to
 * keep "row present ⇔ file present" true under any interleaving of requests.
 */
export class KeyedLock {
  private tails = new Map<string, Promise<void>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => { release = r; });
    const tail = prev.then(() => mine);
    this.tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}
