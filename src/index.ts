/**
 * ldm as a library: everything the CLI commands use, for tests and other tools.
 * The CLI (bin/run.js, src/commands) is a thin layer over these.
 */
// Engine: traced graphs, ops, autodiff, executors, training.
export * from './engine/host-tensor.js';
export { Graph, Tensor, trace, type Dtype } from './engine/graph.js';
export * as ops from './engine/ops.js';
export * as nn from './engine/nn.js';
export { grad } from './engine/autodiff.js';
export { Module, Param, bindParams, checkWeights } from './engine/module.js';
export * from './engine/executor.js';
export { OnnxExecutor } from './engine/onnx/executor.js';
export { selectBackend, createExecutor, probeBackends, parseBackend, type BackendStatus, type BackendSelection } from './engine/backend.js';
export * from './engine/optim.js';
export { Trainer, NonFiniteError, type TrainerOptions, type StepResult, type LossOutput, type TrainerState } from './engine/trainer.js';
export { Rng } from './util/random.js';

// Files: checkpoints, images, runs.
export * from './io/safetensors.js';
export * from './io/checkpoint.js';
export * from './io/atomic.js';
export * from './io/image.js';
export { RunDir } from './io/run-dir.js';

// Data.
export type { Dataset, Sample, Batch } from './data/dataset.js';
export { openDataset, parseDatasetSpec, DATASET_SPEC_FORMS } from './data/sources.js';
export { DataLoader, splitDataset, stackImages, subset } from './data/loader.js';
export { ImageFolderDataset } from './data/image-folder.js';
export { IdxDataset } from './data/idx.js';
export { fashionMnist } from './data/fashion-mnist.js';
export { ShapesDataset, HELDOUT_COMBOS, makeCaption, parseCaption } from './data/shapes.js';
export { checkSample, checkLabelMap } from './data/shapes-checker.js';

// Configs.
export { loadConfig, listZoo, dumpConfig, validateConfig, ConfigError } from './config/load.js';
export * from './config/schema.js';

// Diffusion.
export * from './diffusion/schedule.js';
export * from './diffusion/prediction.js';
export * from './diffusion/timestep-sampling.js';
export * from './diffusion/samplers.js';
export * from './diffusion/sampling-loop.js';

// Models.
export * as autoencoder from './models/autoencoder/index.js';
export { UNetModel } from './models/unet/unet.js';
export { parseUNetConfig, type UNetConfig } from './config/unet-config.js';
export { Tokenizer } from './models/tokenizer.js';
export { TextEncoder } from './models/text-encoder.js';
export { ClassEmbedder } from './models/class-embedder.js';
export { LatentDiffusion } from './models/latent-diffusion.js';
export { readLdmCheckpoint, writeLdmCheckpoint } from './checkpoint/ldm-checkpoint.js';
export { openFirstStage } from './checkpoint/first-stage-checkpoint.js';
export { PixelFirstStage, type FirstStage } from './models/first-stage.js';
export { FidInceptionV3, inceptionNetwork } from './models/inception.js';
export { DomainClassifier, loadClassifier, saveClassifier } from './models/classifier.js';

// Training, pipelines, metrics, checkpoints.
export { trainAutoencoder, type TrainAutoencoderOptions } from './training/train-autoencoder.js';
export { trainLdm, resolveLdmConfig, type TrainLdmOptions } from './training/train-ldm.js';
export * as autoencode from './pipelines/autoencode.js';
export { generate, sampleInputs } from './sampling/generate.js';
export { resolveSampleSettings, type SampleSettings, type SampleOverrides } from './sampling/sample-settings.js';
export { sampleToFiles } from './pipelines/sample-files.js';
export { Denoiser } from './sampling/denoiser.js';
export { exportOnnx, traceForExport } from './pipelines/export-onnx.js';
export {
  evaluateClassModel, evaluateShapesPrompts, evaluateSemanticMaps, centreCrop, type ConditionalEvalResult, type JudgedModel,
} from './pipelines/conditional-eval.js';
export { quickstart, QUICKSTART_PROMPTS, type QuickstartOptions, type QuickstartResult } from './training/quickstart.js';
export { upscaleFiles, UPSCALE_METHODS, type UpscaleFilesOptions, type UpscaleFilesResult, type UpscaledFile, type UpscaleMethod } from './pipelines/upscale/upscale-files.js';
export { loadSrModel, srScaleOf, upscaleWithModel, resolveUpscaleSettings, tilePlan, type SrModel, type ModelUpscaleOptions, type UpscaleSettings, type UpscaleOverrides } from './pipelines/upscale/model.js';
export { upscaleClassical, downscaleClassical, resizeClassical, CLASSICAL_METHODS, type ClassicalMethod } from './pipelines/upscale/classical.js';
export { tileGrid, tilesOf, tileWeight, TileBlend, seamRatio, seamRatios } from './pipelines/upscale/tiles.js';
export { compareToReference, findReference, type SrMetrics } from './pipelines/upscale/reference.js';
export { waveletColorFix, waveletLevels, COLOR_FIXES, type ColorFix } from './pipelines/upscale/color-fix.js';
export { highFrequencyRatio, highFrequencyPower, luma, dft2 } from './metrics/high-frequency.js';
export { degrade, downscale, gaussianBlur, addNoise, srCondition, randomCrops } from './data/degrade.js';
export { SrDataSchema, type SrDataConfig } from './config/sr-data-config.js';
export { compareFactors, type CompareFactorsOptions, type CompareFactorsResult } from './study/run.js';
export { renderReport, type RenderedReport } from './study/report.js';
export { loadStudy, type StudyPlan, type FactorFigures, type CheckpointFigures } from './study/figures.js';
export { chartPng, chartSvg, type ChartSpec } from './study/charts.js';
export * as metrics from './metrics/evaluate.js';
export { frechetDistance } from './metrics/fid.js';
export { trainClassifier } from './metrics/train-classifier.js';
export { loadAnyCheckpoint } from './checkpoint/load-any.js';
export { convertCheckpoint } from './checkpoint/convert.js';
export { referenceConfigReader } from './checkpoint/reference-config.js';
export { readTorchCheckpoint } from './io/torch-checkpoint.js';

// ldm serve: the HTTP server and the models it keeps loaded.
export { createServer, type ServerOptions, type GalleryEntry } from './server/http-server.js';
export { ServedModels, type LoadModelsOptions, type ServedModel } from './server/served-models.js';
