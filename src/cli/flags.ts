/** Flag types shared by commands. */
import { Flags } from '@oclif/core';
import { DEFAULT_MEMORY_SHARE, parseByteSize } from '../util/memory-budget.js';

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

/** --time-limit in minutes (a real number), for the training commands. */
export function timeLimitFlag(extra = '') {
  return numberFlag({ positive: true })({ summary: `Stop after this many minutes (checkpointing there), e.g. 19 or 0.5.${extra ? ` ${extra}` : ''}` });
}

/** --lr-schedule, for the training commands. */
export const lrScheduleFlag = () => Flags.option({
  options: ['constant', 'cosine'] as const, default: 'constant' as const,
  summary: 'Learning rate: constant (the reference) or cosine decay to 2% by the last step or the time limit.',
})();

/** --max-memory: a size such as 4G or 800M (bytes), for the commands that estimate their peak memory (util/memory-budget.ts). */
export const maxMemoryFlag = () => Flags.custom<number>({
  parse: async (s) => parseByteSize(s),
  summary: `Refuse (or tile) work whose estimated peak memory is above this size, e.g. 4G or 800M (default ${DEFAULT_MEMORY_SHARE * 100}% of the machine's memory).`,
})();
