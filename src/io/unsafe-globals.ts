/**
 * Python globals that a pickle has no honest reason to name: each can run code, spawn processes, open files or
 * sockets, or load another pickle when PyTorch's unpickler resolves it. ldm's unpickler never resolves anything,
 * but a checkpoint naming one of these is an attack on whoever next opens it with torch.load, so it is refused.
 *
 * Sources, merged (checked 2025): picklescan's `_unsafe_globals` (github.com/mmaitre314/picklescan,
 * src/picklescan/scanner.py, the list the Hugging Face Hub's pickle scanning runs) and modelscan's
 * `unsafe_globals` (github.com/protectai/modelscan, modelscan/settings.py). Additions are marked.
 */

/** Every global of these modules (and of their submodules: `os.path` is `os`'s). */
const WHOLE_MODULES = [
  'os', 'posix', 'nt', // posix and nt are what os.system pickles as on Linux and Windows
  'subprocess', '_posixsubprocess', // the latter: addition, subprocess's fork_exec
  'sys', 'pty', 'socket', 'ssl', 'shutil', 'runpy', 'commands', 'ctypes', 'asyncio', 'aiohttp', 'httplib', 'requests.api',
  'webbrowser', 'bdb', 'pdb', 'pickle', '_pickle', 'pip', 'pydoc', 'timeit', 'venv', 'numpy.f2py',
  'numpy.testing._private.utils', 'distutils.file_util',
  'importlib', 'marshal', 'dill', 'code', // addition: import, bytecode and nested-pickle loaders
];

/** Single globals of otherwise harmless modules. */
const NAMES: Record<string, readonly string[]> = {
  builtins: ['eval', 'exec', 'compile', 'getattr', 'setattr', 'delattr', 'apply', 'open', 'breakpoint', '__import__', 'globals', 'locals', 'vars', 'input'],
  __builtin__: ['eval', 'exec', 'compile', 'getattr', 'setattr', 'delattr', 'apply', 'open', 'breakpoint', '__import__', 'globals', 'locals', 'vars', 'input', 'execfile', 'file'],
  functools: ['partial'], // functools.partial(os.system, ...)
  operator: ['attrgetter', 'itemgetter', 'methodcaller'],
  cProfile: ['run', 'runctx'],
  profile: ['Profile.run', 'Profile.runctx'],
  trace: ['Trace.run', 'Trace.runctx'],
  doctest: ['debug_script'],
  ensurepip: ['_run_pip'],
  'torch.serialization': ['load'],
  'torch._inductor.codecache': ['compile_file'],
  'torch.jit.unsupported_tensor_ops': ['execWrapper'],
  'torch.utils.collect_env': ['run'],
  'torch.utils._config_module': ['ConfigModule.load_config'],
  'torch.utils.data.datapipes.utils.decoder': ['basichandlers'],
  'torch._dynamo.guards': ['GuardBuilder.get'],
  'torch.fx.experimental.symbolic_shapes': ['ShapeEnv.evaluate_guards_expression'],
};

const MODULE_SET = new Set(WHOLE_MODULES);

/** Whether `module.name`, as a pickle's GLOBAL / STACK_GLOBAL / INST names it, is a known-dangerous callable. */
export function isUnsafeGlobal(module: string, name: string): boolean {
  const parts = module.split('.');
  for (let i = 1; i <= parts.length; i++) if (MODULE_SET.has(parts.slice(0, i).join('.'))) return true;
  return NAMES[module]?.includes(name) ?? false;
}
