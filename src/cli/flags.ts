/** Flag types shared by commands. */
import { Flags } from '@oclif/core';

/** A real-valued flag (oclif has only integers); `positive` rejects zero and negatives. */
export function numberFlag(opts: { positive?: boolean } = {}) {
  return Flags.custom<number>({
    parse: async (s) => {
      const v = Number(s);
      const ok = s.trim() !== '' && Number.isFinite(v) && (!opts.positive || v > 0);
      if (!ok) throw new Error(`expected a ${opts.positive ? 'positive ' : ''}number, got "${s}"`);
      return v;
    },
  });
}
