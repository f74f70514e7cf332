// The jobs a page follows with `persist: true`, kept in localStorage until they end, so a
// reload (or a new tab) can resume them (Jobstream.resumeAll). Internal: import from
// jobstream.js instead.
//
// One list per API (the key names the base URL), of { id, type, savedAt }. Storage that
// refuses (private mode, a full quota, none at all) only makes jobs unsaved: following
// them still works.

export function defaultStorage() {
  try {
    return globalThis.localStorage || null;
  } catch {
    return null; // a sandboxed frame may not touch it at all
  }
}

export class SavedJobs {
  constructor(storage, key) {
    this.storage = storage;
    this.key = key;
  }

  list() {
    if (!this.storage) return [];
    try {
      const saved = JSON.parse(this.storage.getItem(this.key) || "[]");
      return Array.isArray(saved) ? saved.filter((entry) => entry && typeof entry.id === "string") : [];
    } catch {
      return [];
    }
  }

  add(job) {
    const saved = this.list();
    if (saved.some((entry) => entry.id === job.id)) return;
    saved.push({ id: job.id, type: job.type || null, savedAt: new Date().toISOString() });
    this.write(saved);
  }

  remove(id) {
    const saved = this.list();
    const kept = saved.filter((entry) => entry.id !== id);
    if (kept.length !== saved.length) this.write(kept);
  }

  write(saved) {
    if (!this.storage) return;
    try {
      if (saved.length) this.storage.setItem(this.key, JSON.stringify(saved));
      else this.storage.removeItem(this.key);
    } catch {
      // full or refused: the job is followed all the same, only not resumable
    }
  }
}
