import { Flags } from '@oclif/core';
import { LdmCommand } from '../cli/base-command.js';
import { listZoo, type ZooEntry } from '../config/load.js';
import { referenceConfigReader } from '../checkpoint/reference-config.js';

export default class Zoo extends LdmCommand<typeof Zoo> {
  static override summary = 'List the model zoo: the configs that commands accept by name.';
  static override description =
    'Configs come from the package and from the folders in LDM_CONFIG_DIR (searched first). Give a name (kl-f8) or a file path wherever a config is asked for.';
  static override examples = ['<%= config.bin %> zoo', '<%= config.bin %> zoo --kind autoencoder', '<%= config.bin %> zoo --json'];
  static override flags = {
    kind: Flags.string({ summary: 'Only configs of this model kind (e.g. autoencoder).' }),
    paths: Flags.boolean({ summary: 'Show each config file path.' }),
  };

  async run(): Promise<void> {
    const entries = listZoo({ foreign: referenceConfigReader }).filter((e) => this.flags.kind === undefined || e.kind === this.flags.kind);
    this.result(entries, (list) => formatZoo(list, this.flags.paths));
  }
}

function formatZoo(entries: readonly ZooEntry[], paths: boolean): string {
  if (entries.length === 0) return 'no configs found';
  const nameWidth = Math.max(...entries.map((e) => e.name.length));
  const kindWidth = Math.max(...entries.map((e) => e.kind.length));
  return entries.map((e) => `${e.name.padEnd(nameWidth)}  ${e.kind.padEnd(kindWidth)}  ${e.summary}${paths ? `  ${e.path}` : ''}`).join('\n');
}
