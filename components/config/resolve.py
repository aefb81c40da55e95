"""What params.yaml names outside itself, resolved when it is loaded.

``load_params`` calls ``check_resolvable(params, root)`` with ``root`` the folder of params.yaml
(the project), so the CLI, the flow and every stage's ``main`` refuse a run that would fail hours
later for want of something it names:

* ``evaluate.generators``: each a reference generator or a trained one, i.e. a folder under
  models/ that a dvc.yaml stage produces or that already holds ``generator_config.json``; the
  evaluate stage must depend on the ones a stage produces, and score the one register registers;
* ``judges.encoder_model``, ``judges.grounder_model``, ``generator.pretrained``: each a folder
  holding that kind of model (a relative path is read from ``root``, where DVC runs every stage)
  or a hub id found in the local Hugging Face cache or, failing that, on the hub;
* ``synthesize.resolution`` against the FLUX model's packing (VAE factor x patch), when
  ``generator.pretrained`` can be read;
* ``pipeline.tracking_uri``: a SQLite store's folder exists.

Rules on values alone stay pydantic validators on the sections; a ``Params()`` built in code is
never resolved. Outside a project (no dvc.yaml beside params.yaml, as in a test that runs one
stage) what the pipeline produces is unknown, so generator names are left to the evaluate stage.
Nothing here reaches the network unless a hub id is missing from the local cache.
"""
from __future__ import annotations

import functools
import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from .base import ParamsError
from .data import REFERENCE_GENERATORS

# config.json model_type -> the adapter family that loads it (components/judging/adapters.py).
ENCODER_TYPES = {"vit": "vit", "dinov2": "dinov2", "dinov2_with_registers": "dinov2",
                 "clip": "clip", "clip_vision_model": "clip"}
GROUNDER_TYPES = {"owlvit": "owl", "owlv2": "owl", "grounding-dino": "gdino", "mm-grounding-dino": "gdino"}
# The code that writes a trained generator folder: a dvc.yaml stage depending on it and putting
# out models/<name> trains generator <name>.
GENERATOR_CODE = "components/models/generator.py"
HUB_TIMEOUT = 5.0  # seconds the hub gets to answer for a model missing from the local cache
# A hub id: org/name or a bare legacy name. "./x", "../x", "/x" and "a/b/c" can only be paths.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_WEIGHTS = ("*.safetensors", "*.bin")


@dataclass(frozen=True)
class ModelKind:
    """What a params key must name: the files its folder holds, the config.json model types
    accepted (None: not checked) and the subfolders that must hold weights ("" = the folder)."""

    key: str
    what: str
    files: tuple[str, ...]
    model_types: tuple[str, ...] | None
    weights_in: tuple[str, ...]


ENCODER = ModelKind("judges.encoder_model", "a transformers vision encoder (DINO ViT, DINOv2, CLIP)",
                    ("config.json",), tuple(ENCODER_TYPES), ("",))
GROUNDER = ModelKind("judges.grounder_model", "a transformers zero-shot detector (OWL-ViT, OWLv2, Grounding DINO)",
                     ("config.json",), tuple(GROUNDER_TYPES), ("",))
# What components/models/flux.py from_flux reads: four models and two tokenizers by subfolder.
FLUX = ModelKind("generator.pretrained", "FLUX.1 Kontext in diffusers' layout",
                 ("transformer/config.json", "vae/config.json", "text_encoder/config.json",
                  "text_encoder_2/config.json", "tokenizer/tokenizer_config.json",
                  "tokenizer_2/tokenizer_config.json"),
                 None, ("transformer", "vae", "text_encoder", "text_encoder_2"))


def check_resolvable(params, root: str | Path, source: str | Path | None = None) -> None:
    """Raise ParamsError, one line per problem (key: what is wrong; the fix), unless everything
    ``params`` names resolves in project ``root``."""
    found = problems(params, root)
    if found:
        where = source or Path(root) / "params.yaml"
        raise ParamsError("\n  ".join([f"{where}: {len(found)} setting(s) name what cannot be found", *found]))


def problems(params, root: str | Path) -> list[str]:
    """Every reason the run ``params`` describes, in project ``root``, would fail for want of
    something it names; [] when there is none."""
    root = Path(root).resolve()
    found = generator_problems(params, root)
    for kind, spec in ((ENCODER, params.judges.encoder_model), (GROUNDER, params.judges.grounder_model),
                       (FLUX, params.generator.pretrained)):
        if spec:
            folder, problem = locate(kind, spec, root)
            found += [problem] if problem else []
            if folder is not None and problem is None and kind is FLUX:
                found += _flux_size_problems(params, spec, folder)
    return found + _store_problems(params)


# --- generators and dvc.yaml ------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    """A dvc.yaml stage as far as the checks need it."""

    name: str
    argv: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]

    def runs(self, module: str) -> bool:
        return module in self.argv

    def arg(self, flag: str) -> str | None:
        return self.argv[self.argv.index(flag) + 1] if flag in self.argv[:-1] else None

    def args(self, flag: str) -> list[str]:
        """Every value after ``flag`` up to the next option (``--model a b``: [a, b])."""
        if flag not in self.argv:
            return []
        rest = self.argv[self.argv.index(flag) + 1:]
        return rest[:next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]

    def depends_on(self, path: str) -> bool:
        return any(path == d or path.startswith(d + "/") for d in self.deps)


def _paths(entries) -> tuple[str, ...]:
    out = []
    for e in entries or []:
        out.extend(e.keys() if isinstance(e, dict) else [e])
    return tuple(str(p).rstrip("/") for p in out)


def dvc_stages(root: Path) -> list[Stage] | None:
    """The stages of ``root``/dvc.yaml, None when there is none (not a project)."""
    f = root / "dvc.yaml"
    if not f.is_file():
        return None
    try:
        doc = yaml.safe_load(f.read_text()) or {}
    except yaml.YAMLError:
        return []  # DVC refuses it with its own message on the first stage
    stages = []
    for name, s in (doc.get("stages") or {}).items() if isinstance(doc, dict) else ():
        if not isinstance(s, dict):
            continue
        cmd = s.get("cmd", "")
        cmd = " && ".join(cmd) if isinstance(cmd, list) else str(cmd)
        try:
            argv = shlex.split(cmd)
        except ValueError:  # unbalanced quotes: DVC's shell would refuse it too
            argv = cmd.split()
        stages.append(Stage(str(name), tuple(argv), _paths(s.get("deps")), _paths(s.get("outs"))))
    return stages


def trained_generators(stages: list[Stage], models: str) -> dict[str, str]:
    """{generator name: stage}: the folders ``models``/<name> put out by a stage whose code writes
    a generator (pretrain, sft, ...)."""
    return {PurePosixPath(o).name: s.name for s in stages if s.depends_on(GENERATOR_CODE)
            for o in s.outs if PurePosixPath(o).parent == PurePosixPath(models)}


def generator_problems(params, root: Path) -> list[str]:
    """evaluate.generators against what the project has or produces, and against the evaluate
    and register stages of its dvc.yaml."""
    stages = dvc_stages(root)
    if stages is None:
        return []
    names = params.evaluate.generators
    evaluate = next((s for s in stages if s.runs("components.evaluate")), None)
    models = (evaluate.arg("--models") if evaluate else None) or "models"
    produced = trained_generators(stages, models)
    existing = sorted(p.parent.name for p in (root / models).glob("*/generator_config.json"))
    found = []
    unknown = [g for g in names if g not in REFERENCE_GENERATORS and g not in produced and g not in existing]
    if unknown:
        found.append(
            f"evaluate.generators: unknown generator(s) {unknown}; known: reference {list(REFERENCE_GENERATORS)}, "
            f"trained by dvc.yaml {sorted(produced)}, already in {models}/ {existing}; fix: correct the name, or add "
            f"the stage that trains it to dvc.yaml (its outs {models}/<name>)")
    if evaluate is not None:
        for g in names:
            if g in produced and not evaluate.depends_on(f"{models}/{g}"):
                found.append(f"evaluate.generators: {g!r} is trained by stage {produced[g]!r}, but dvc.yaml's "
                             f"{evaluate.name} stage does not depend on {models}/{g}, so DVC may score it before it "
                             f"is trained (or score a stale one); fix: add {models}/{g} to {evaluate.name}'s deps")
    register = next((s for s in stages if s.runs("components.register")), None)
    for registered in register.args("--model") if register else []:
        name = PurePosixPath(registered).name
        if name not in names:
            found.append(f"evaluate.generators: dvc.yaml's {register.name} stage registers {registered}, whose version "
                         f"carries its benchmark scores, but evaluate.generators does not score {name!r}; fix: add "
                         f"{name!r} to evaluate.generators")
    return found


# --- models by path or hub id -------------------------------------------------------------------

def locate(kind: ModelKind, spec: str, root: Path) -> tuple[Path | None, str | None]:
    """(folder holding the model, problem): the folder is the local path (relative to ``root``)
    or the cached hub snapshot, None when the model is on the hub but not cached (the stage
    downloads it); the problem is None when the model will load."""
    local = Path(spec) if Path(spec).is_absolute() else root / spec
    fix = f"fix: a path to {kind.what} saved with save_pretrained (a relative path is read from {root})"
    fix += f", or download it first (hf download {spec})" if _HUB_ID.fullmatch(spec) else ", or a hub id (org/name)"
    if local.exists() or not _HUB_ID.fullmatch(spec):
        if not local.is_dir():
            why = "is a file" if local.exists() else "does not exist"
            return None, f"{kind.key}: {spec!r} is not a folder ({local} {why}); {fix}"
        problem = folder_problem(kind, local)
        return local, f"{kind.key}: {spec!r}: {problem}; {fix}" if problem else None
    snapshot = cached_snapshot(spec, kind.files[0])
    if snapshot is not None:
        wrong = type_problem(kind, snapshot)  # downloading the rest would not help
        if wrong:
            return None, f"{kind.key}: {spec!r}: {wrong}; {fix}"
        partial = files_problem(kind, snapshot)
        if partial is None:
            return snapshot, None
        why = hub_problem(spec, kind.files[0])  # the stage downloads the missing files
        return None, None if why is None else \
            f"{kind.key}: {spec!r}: the local Hugging Face cache holds it in part ({partial}) and {why}; {fix}"
    why = hub_problem(spec, kind.files[0])
    if why is None:
        return None, None
    return None, (f"{kind.key}: {spec!r} is neither a folder ({local} does not exist) nor in the local Hugging Face "
                  f"cache, and {why}; {fix}")


def folder_problem(kind: ModelKind, folder: Path) -> str | None:
    """Why ``folder`` does not hold ``kind`` (files, model type, weights), None when it does."""
    return files_problem(kind, folder) or type_problem(kind, folder) or weights_problem(kind, folder)


def files_problem(kind: ModelKind, folder: Path) -> str | None:
    missing = [f for f in kind.files if not (folder / f).is_file()]
    if missing:
        return f"{folder} has no {', '.join(missing)}: it is not {kind.what} saved with save_pretrained"
    return None


def type_problem(kind: ModelKind, folder: Path) -> str | None:
    if kind.model_types is None or not (folder / "config.json").is_file():
        return None
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError):
        return f"{folder / 'config.json'} is not a transformers config (not a JSON object)"
    if model_type not in kind.model_types:
        return (f"{folder} holds a model_type {model_type!r} model, and {kind.key} takes {kind.what}: model_type one "
                f"of {list(kind.model_types)}")
    return None


def weights_problem(kind: ModelKind, folder: Path) -> str | None:
    empty = [sub or "." for sub in kind.weights_in if not any(any((folder / sub).glob(p)) for p in _WEIGHTS)]
    return f"{folder} has no weights (*.safetensors, *.bin) in {empty}" if empty else None


def cached_snapshot(repo_id: str, filename: str) -> Path | None:
    """The local Hugging Face cache's snapshot folder of ``repo_id`` (main) if it holds
    ``filename``, else None. No network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a valid repo id (huggingface_hub's HFValidationError)
        return None
    if not isinstance(found, str):
        return None
    return Path(found).parents[len(PurePosixPath(filename).parts) - 1]


@functools.cache
def hub_problem(repo_id: str, filename: str) -> str | None:
    """None when the Hugging Face hub serves ``filename`` of ``repo_id`` to this machine (with
    its login, within HUB_TIMEOUT seconds), else why not. One request per id and process."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set, so the hub is not asked"
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=HUB_TIMEOUT)
    except GatedRepoError:
        return "the hub gates it: accept its licence on huggingface.co and log in (hf auth login)"
    except RepositoryNotFoundError:
        return "the hub has no such model (or it is private: log in with hf auth login)"
    except EntryNotFoundError:
        return f"the hub's {repo_id} has no {filename}"
    except Exception as e:  # noqa: BLE001 - offline, DNS, timeout, proxy: all mean "cannot get it"
        return f"the hub cannot be reached ({type(e).__name__})"
    return None


def _flux_size_problems(params, spec: str, folder: Path) -> list[str]:
    """synthesize.resolution against the FLUX model's packing: its VAE shrinks images by
    2^(levels - 1), its transformer packs patch x patch latents per token."""
    try:
        vae = json.loads((folder / "vae" / "config.json").read_text())
        transformer = json.loads((folder / "transformer" / "config.json").read_text())
        factor, latent = 2 ** (len(vae["block_out_channels"]) - 1), int(vae["latent_channels"])
        patch = math.isqrt(int(transformer["in_channels"]) // latent)
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return []  # from_flux reports a malformed config in its own words
    res, step = params.synthesize.resolution, factor * patch
    if res % step == 0:
        return []
    return [(f"synthesize.resolution {res} is not divisible by {step}: {spec}'s VAE shrinks images x{factor} and "
             f"its transformer packs {patch}x{patch} latents per token (generator.pretrained); try resolution "
             f"{max(step, res - res % step)}")]


def _store_problems(params) -> list[str]:
    """A SQLite tracking store needs its folder: SQLite creates the file, not the folder."""
    uri = params.pipeline.tracking_uri or ""
    if not uri.lower().startswith("sqlite") or ":///" not in uri:
        return []
    db = Path(uri.split(":///", 1)[1])
    if db.parent.is_dir():
        return []
    return [(f"pipeline.tracking_uri: the folder of {db} does not exist (SQLite creates the file, not its "
             f"folder); fix: create {db.parent} or point the URI elsewhere")]
