import { Args } from '@oclif/core';
import { LdmCommand } from '../cli/base-command.js';
import { renderReport } from '../study/report.js';

export default class Report extends LdmCommand<typeof Report> {
  static override summary = 'Redraw the report of a compare-factors study from its recorded figures, without training.';
  static override description =
    'Reads <folder>/study.json and each factor\'s figures.json, draws the charts (PNG) and writes report.md and the self-contained '
    + 'report.html again. Works on a study that is still running or was stopped: it shows what was measured so far.';
  static override examples = ['<%= config.bin %> report study', '<%= config.bin %> report study --json'];
  static override args = {
    folder: Args.string({ required: true, description: 'The study folder (-o of ldm compare-factors).' }),
  };

  async run(): Promise<void> {
    const r = await renderReport(this.args.folder);
    this.result(r, (v) => [`report: ${v.markdown}, ${v.html}`, `charts: ${v.charts.join(', ')}`].join('\n'));
  }
}
