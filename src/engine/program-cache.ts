/**
 * Compiled programs by key (usually the input shape): each compiled on first use, all released together. A compile
 * that fails is forgotten, so the next call compiles again instead of repeating the old error, and dispose skips it.
 */
import type { Program } from './executor.js';

export class ProgramCache<K extends string | number = string> {
  private readonly programs = new Map<K, Promise<Program>>();

  /** The program for `key`, from `compile` the first time. */
  get(key: K, compile: () => Promise<Program>): Promise<Program> {
    let p = this.programs.get(key);
    if (!p) {
      const made = compile();
      made.catch(() => {
        if (this.programs.get(key) === made) this.programs.delete(key);
      });
      this.programs.set(key, made);
      p = made;
    }
    return p;
  }

  get size(): number {
    return this.programs.size;
  }

  /** Release every program compiled so far. */
  async dispose(): Promise<void> {
    const all = [...this.programs.values()];
    this.programs.clear();
    for (const p of all) {
      const program = await p.catch(() => undefined);
      await program?.dispose();
    }
  }
}
