/**
 * The study's charts: Vega-Lite specs compiled to Vega, rendered headless to SVG (no canvas, no browser) and
 * rasterised to PNG by sharp (librsvg; text in DejaVu Sans). Every chart has the same pixel size: the view is
 * fitted to CHART_WIDTH x CHART_HEIGHT (axes and legend inside) and drawn at CHART_SCALE.
 */
import sharp from 'sharp';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { writeFileAtomic } from '../io/atomic.js';

export const CHART_WIDTH = 640;
export const CHART_HEIGHT = 400;
export const CHART_SCALE = 2;

export interface LinePoint {
  series: string;
  x: number;
  y: number;
}

export interface ChartSpec {
  title: string;
  subtitle?: string;
  xTitle: string;
  yTitle: string;
  /** A log y axis (for quantities spanning orders of magnitude). */
  yLog?: boolean;
  /** Order of the legend's series. */
  seriesOrder: readonly string[];
  seriesTitle: string;
  /** x as categories (e.g. factors) rather than a number line. */
  xCategorical?: boolean;
  points: readonly LinePoint[];
  /** bar: one bar per x (one series); line: lines with points, one per series. */
  mark?: 'line' | 'bar';
}

const FONT = 'DejaVu Sans';

function vegaLiteSpec(c: ChartSpec): TopLevelSpec {
  const xType = c.xCategorical ? 'ordinal' : 'quantitative';
  const xOrder = c.xCategorical ? [...new Set(c.points.map((p) => p.x))].sort((a, b) => a - b) : undefined;
  const color = {
    field: 'series', type: 'nominal' as const, title: c.seriesTitle, sort: [...c.seriesOrder],
    scale: { domain: [...c.seriesOrder] },
  };
  const x = { field: 'x', type: xType, title: c.xTitle, ...(xOrder ? { sort: xOrder, axis: { labelAngle: 0 } } : { scale: { zero: false, nice: true } }) };
  const y = { field: 'y', type: 'quantitative' as const, title: c.yTitle, scale: c.yLog ? { type: 'log' as const } : { zero: c.mark === 'bar' } };
  const base = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    width: CHART_WIDTH, height: CHART_HEIGHT,
    autosize: { type: 'fit' as const, contains: 'padding' as const },
    padding: 12,
    background: 'white',
    title: { text: c.title, ...(c.subtitle ? { subtitle: c.subtitle } : {}), anchor: 'start' as const },
    data: { values: c.points.map((p) => ({ ...p })) },
    config: {
      font: FONT,
      axis: { labelFontSize: 12, titleFontSize: 13, grid: true },
      legend: { labelFontSize: 12, titleFontSize: 13, orient: 'right' as const },
      title: { fontSize: 16, subtitleFontSize: 12 },
    },
  };
  if (c.mark === 'bar') {
    return {
      ...base,
      layer: [
        { mark: { type: 'bar' }, encoding: { x, y, color } },
        { mark: { type: 'text', dy: -8, fontSize: 12 }, encoding: { x, y, text: { field: 'y', type: 'quantitative', format: '.2f' } } },
      ],
    } as TopLevelSpec;
  }
  return { ...base, mark: { type: 'line', point: { size: 60 }, strokeWidth: 2.5 }, encoding: { x, y, color } } as TopLevelSpec;
}

/** The chart as SVG text. */
export async function chartSvg(c: ChartSpec): Promise<string> {
  if (c.points.length === 0) throw new Error(`chart "${c.title}" has no points`);
  const view = new vega.View(vega.parse(compile(vegaLiteSpec(c)).spec), { renderer: 'none' });
  try {
    return await view.toSVG(CHART_SCALE);
  } finally {
    view.finalize();
  }
}

/** The chart as PNG bytes, CHART_WIDTH * CHART_SCALE by CHART_HEIGHT * CHART_SCALE pixels. */
export async function chartPng(c: ChartSpec): Promise<Uint8Array> {
  const svg = await chartSvg(c);
  const img = sharp(Buffer.from(svg)).resize(CHART_WIDTH * CHART_SCALE, CHART_HEIGHT * CHART_SCALE, { fit: 'fill' }).flatten({ background: '#ffffff' });
  return new Uint8Array(await img.png().toBuffer());
}

export async function writeChart(file: string, c: ChartSpec): Promise<void> {
  await writeFileAtomic(file, await chartPng(c), { force: true });
}
