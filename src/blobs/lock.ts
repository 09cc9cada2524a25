// Room: blobs. May import src/oci; never src/build or src/registry.
/**
 * An in-process lock per key. One process owning its data directory and index needs no
 * more: serialising the filesystem half of blob commits and deletes per digest keeps
 * "row present ⇔ file present" true under any interleaving of requests. Processes that
 * share an index (replicas over PostgreSQL) also take the key's lock among themselves
 * (`across`), inside this one, so that each process asks for a key once at a time.
 */
export class KeyedLock {
  private tails = new Map<string, Promise<void>>();

  constructor(private readonly across?: <T>(key: string, fn: () => Promise<T>) => Promise<T>) {}

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => { release = r; });
    const tail = prev.then(() => mine);
    this.tails.set(key, tail);
    await prev;
    try {
      return await (this.across ? this.across(key, fn) : fn());
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}
