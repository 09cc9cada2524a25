// Brings the index and the blob store back into agreement: blobs no row records (a crash
// between a blob's publish and its row, or between a row's delete and its blob's) are
// removed, and rows whose blob is gone (an OS crash that lost an index transaction but
// not the file's removal) are forgotten. One merge of two sorted walks, a page at a time:
// the index's rows by digest and the store's listing, which is in the same order.
//
// On a local disk it runs at open, before any request, with no grace: nothing can be in
// mid-commit. On a remote store listing everything may take long, so it runs in the
// background while requests are served, and then a blob without a row is only removed
// when older than the grace (a write publishes its blob and adds its row within moments),
// and a row only forgotten if it was recorded before the walk began and its blob is
// still missing when looked up by itself (a listing is not a snapshot).
//
// Room: blobs. May import src/oci; never src/build or src/registry.
import type { StoreCore } from './core.js';
import type { ListedBlob } from './store/blob-store.js';

const PAGE = 1000;

export interface Reconciled { rowsDropped: number; filesRemoved: number }

export async function reconcileBlobs(core: StoreCore, graceMs: number): Promise<Reconciled> {
  const { index, store, locks } = core;
  const began = Date.now();
  const out: Reconciled = { rowsDropped: 0, filesRemoved: 0 };
  let rows: { digest: string; created_at: number }[] = [];
  let ri = 0;
  let rowsDone = false;
  let listed: ListedBlob[] = [];
  let li = 0;
  let listDone = false;
  const nextRow = async () => {
    if (ri >= rows.length && !rowsDone) {
      rows = await index.blobsAfter(rows.length ? rows[rows.length - 1]!.digest : '', PAGE);
      ri = 0;
      rowsDone = rows.length < PAGE;
    }
    return rows[ri];
  };
  let lastListed = '';
  const nextListed = async () => {
    if (li >= listed.length && !listDone) {
      listed = await store.list(lastListed, PAGE);
      li = 0;
      listDone = listed.length < PAGE;
      if (listed.length) lastListed = listed[listed.length - 1]!.digest;
    }
    return listed[li];
  };
  for (;;) {
    const row = await nextRow();
    const blob = await nextListed();
    if (!row && !blob) break;
    if (blob && (!row || blob.digest < row.digest)) {
      li++;
      if (blob.modifiedMs > began - graceMs) continue;
      await locks.run(blob.digest, async () => {
        if (await index.blobSize(blob.digest) !== undefined) return;
        await store.delete(blob.digest);
        out.filesRemoved++;
      });
    } else if (row && (!blob || row.digest < blob.digest)) {
      ri++;
      if (graceMs > 0 && (row.created_at >= began || (await store.stat(row.digest)) !== undefined)) continue;
      await index.forgetBlob(row.digest);
      out.rowsDropped++;
    } else {
      ri++;
      li++;
    }
  }
  return out;
}
