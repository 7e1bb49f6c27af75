"""One case explained: what the booster's LLM layer attends to and what it changes (`llm4seg explain`).

The model is loaded as nnUNetv2_predict loads it (nnU-Net's predictor, the same preprocessing and checkpoint), the
case is predicted by nnU-Net's sliding window (without test-time mirroring, so every tile is one network call)
while a hook keeps the booster's input of every tile; the tile nearest the predicted object is then explained
with explicit attention (attention_maps.py). Maps live in the tile's (preprocessed) space.
"""
from __future__ import annotations

import argparse
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnunetv2_llm4seg.attention_maps import BoosterTrace, head_statistics, trace_booster
from nnunetv2_llm4seg.errors import CheckpointError, LLM4SegError
from nnunetv2_llm4seg.spec import BoosterSpec


class ExplainError(LLM4SegError, ValueError):
    """The explain command's input is wrong (model folder, image, query)."""


@dataclass
class Explanation:
    """One explained tile: arrays in the tile's voxel grid, token maps over the booster's token grid."""

    case: str
    spec: BoosterSpec
    trace: BoosterTrace
    image: np.ndarray  # (*tile) first input channel, preprocessed
    prediction: np.ndarray  # (*tile) bool, predicted foreground
    reference: np.ndarray | None  # (*tile) bool, reference foreground
    tile: list[list[int]]  # [start, stop) per axis of the preprocessed (padded) case
    query: tuple[int, ...]  # token index per grid axis (grid order: z, y, x or y, x)
    query_source: str
    gate: np.ndarray | None  # (C,) for gated boosters

    @property
    def grid(self) -> tuple[int, ...]:
        return self.trace.grid

    @property
    def query_index(self) -> int:
        return int(np.ravel_multi_index(self.query, self.grid))

    def attention(self) -> np.ndarray:
        """(heads, N, N) of the explained tile."""
        return self.trace.attention[0].cpu().numpy()

    def foreground_fraction(self, mask: np.ndarray | None = None) -> np.ndarray:
        """(N,) share of each token's area that is foreground in `mask` (default: the prediction)."""
        mask = torch.from_numpy((self.prediction if mask is None else mask).astype(np.float32))[None, None]
        pool = F.adaptive_avg_pool3d if mask.dim() == 5 else F.adaptive_avg_pool2d
        return pool(mask, self.grid).flatten().numpy()


def model_folder(args: argparse.Namespace) -> Path:
    """-m, or the folder nnU-Net's -d/-tr/-p/-c name in nnUNet_results."""
    if args.model:
        folder = Path(args.model)
    else:
        if not (args.dataset and args.configuration and args.trainer):
            raise ExplainError("name the model with -d DATASET -c CONFIGURATION -tr TRAINER [-p PLANS] (as for "
                               "nnUNetv2_predict) or give its folder with -m MODEL_FOLDER.")
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        from nnunetv2_llm4seg.paths import find_dataset

        dataset = find_dataset(args.dataset)
        if dataset is None:
            raise ExplainError(f"dataset {args.dataset!r} was not found in nnUNet_raw, nnUNet_preprocessed or "
                               "nnUNet_results; give its id or DatasetXXX_Name as for nnUNetv2_predict.")
        folder = Path(get_output_folder(dataset, args.trainer, args.plans, args.configuration))
    if not (folder / "plans.json").is_file() or not (folder / "dataset.json").is_file():
        raise ExplainError(f"{folder} is not a trained nnU-Net model folder (it needs plans.json, dataset.json and "
                           "fold_X/); check -d/-c/-tr/-p or -m, and that nnUNet_results is set.")
    return folder


def checkpoint_spec(folder: Path, fold: str, checkpoint_name: str) -> tuple[Path, BoosterSpec]:
    """The checkpoint's path and the booster spec it was trained with; refuses stock trainers and missing files."""
    from nnunetv2_llm4seg.run_spec import read_checkpoint, spec_in_checkpoint

    path = folder / f"fold_{fold}" / checkpoint_name
    if not path.is_file():
        available = sorted(p.parent.name.removeprefix("fold_") for p in folder.glob(f"fold_*/{checkpoint_name}"))
        raise CheckpointError(f"{path} does not exist; folds of {folder.name} with {checkpoint_name}: "
                              f"{', '.join(available) or 'none'}. Pick one with -f, or another checkpoint with "
                              "--chk (e.g. checkpoint_best.pth).")
    checkpoint = read_checkpoint(path)
    configuration = checkpoint.get("init_args", {}).get("configuration", "")
    spec = spec_in_checkpoint(checkpoint, configuration)
    if spec is None:
        raise ExplainError(f"{path} was trained with {checkpoint.get('trainer_name', 'a trainer')}, which has no "
                           "LLM4Seg booster: there is no LLM layer to explain. Use a model trained with an "
                           "LLM4Seg trainer (`llm4seg trainers` lists them).")
    if not spec.has_llm_layer:
        raise ExplainError(f"{path} was trained with an adapters-only booster (init 'none'): there is no LLM layer "
                           "to explain.")
    return path, spec


def case_files(images: Sequence[str], dataset_json: dict) -> list[str]:
    """The case's channel files: as given, or the _0000 file's siblings _0001... when one is given."""
    ending = dataset_json["file_ending"]
    channels = len(dataset_json["channel_names"])
    files = [Path(image) for image in images]
    first = files[0]
    if len(files) == 1 and channels > 1 and first.name.endswith(f"_0000{ending}"):
        stem = first.name[: -len(f"_0000{ending}")]
        files = [first.with_name(f"{stem}_{channel:04d}{ending}") for channel in range(channels)]
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        raise ExplainError(f"image file(s) not found: {', '.join(missing)}; give the case's channel files "
                           f"(NAME_0000{ending} ...), as nnUNetv2_predict reads them.")
    return [str(file) for file in files]


def case_name(files: Sequence[str], ending: str) -> str:
    name = Path(files[0]).name
    name = name[: -len(ending)] if name.endswith(ending) else Path(name).stem
    return re.sub(r"_\d{4}$", "", name)


def parse_query(text: str | None, grid: tuple[int, ...]) -> tuple[int, ...] | None:
    """--query x,y[,z] (token indices, x along the last axis) -> grid order (z, y, x) or (y, x)."""
    if text is None:
        return None
    names = "xyz"[: len(grid)]
    bounds = ", ".join(f"{name} 0..{size - 1}" for name, size in zip(names, reversed(grid)))
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != len(grid) or any(not 0 <= value < size for value, size in zip(values, reversed(grid))):
        raise ExplainError(f"--query {text} is outside the token grid {'x'.join(map(str, reversed(grid)))} "
                           f"(x by y{' by z' if len(grid) == 3 else ''}): give {','.join(names)} with {bounds}.")
    return tuple(reversed(values))


def default_query(prediction: np.ndarray, grid: tuple[int, ...]) -> tuple[tuple[int, ...], str]:
    """The token at the predicted foreground's centre of mass, else the grid's centre."""
    if not prediction.any():
        return tuple(size // 2 for size in grid), "grid centre (nothing predicted in the tile)"
    centre = np.argwhere(prediction).mean(axis=0)
    token = tuple(min(int(c * size / extent), size - 1) for c, size, extent in zip(centre, grid, prediction.shape))
    return token, "predicted object's centre"


@dataclass
class CaseRun:
    padded_image: np.ndarray  # (C, *case) preprocessed and padded as the sliding window pads it
    padded_prediction: np.ndarray  # (*case) bool
    padded_reference: np.ndarray | None
    slicers: list[tuple]
    features: list[torch.Tensor]  # the booster's input per tile, in slicer order


def load_predictor(folder: Path, fold: str, checkpoint_name: str, device: torch.device) -> Any:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=device.type == "cuda",
                                device=device, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (fold if fold == "all" else int(fold),),
                                                   checkpoint_name)
    return predictor


def read_case(folder: Path, dataset_json: dict, files: list[str],
              reference: str | None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """The image (C, ...) and optional reference (1, ...) as nnU-Net's reader for this model gives them; the
    channel count is checked before anything is loaded."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    reader = PlansManager(str(folder / "plans.json")).image_reader_writer_class()
    data, properties = reader.read_images(files)
    expected = len(dataset_json["channel_names"])
    if data.shape[0] != expected:
        names = ", ".join(dataset_json["channel_names"].values())
        raise ExplainError(f"the image has {data.shape[0]} channel(s), but this model was trained on {expected} "
                           f"({names}): give one file per channel (NAME_0000, NAME_0001, ...) as nnUNetv2_predict "
                           "reads them.")
    seg = None
    if reference is not None:
        if not Path(reference).is_file():
            raise ExplainError(f"--reference {reference} does not exist.")
        seg, _ = reader.read_seg(reference)
        if seg.shape[1:] != data.shape[1:]:
            raise ExplainError(f"--reference {reference} has shape {seg.shape[1:]}, the image {data.shape[1:]}: "
                               "give the image's own label map.")
    return data, seg, properties


def pad_to_patch(array: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """(C, *spatial) zero-padded to at least `patch` as nnU-Net's sliding window pads a case smaller than the
    patch (centred; numpy's keyword for the value, where the predictor pads a tensor)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    return pad_nd_image(array, patch, "constant", {"constant_values": 0}, False, None)


def run_case(predictor: Any, data: np.ndarray, seg: np.ndarray | None, properties: dict) -> CaseRun:
    """nnU-Net's preprocessing and sliding-window prediction, keeping the booster's input of every tile."""
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, seg, _ = preprocessor.run_case_npy(data, seg, properties, predictor.plans_manager,
                                             predictor.configuration_manager, predictor.dataset_json)
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    features: list[torch.Tensor] = []
    hook = network.booster.register_forward_pre_hook(lambda module, args: features.append(args[0].detach().clone()))
    try:
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data))
    finally:
        hook.remove()
    prediction = predictor.label_manager.convert_logits_to_segmentation(logits.float()).numpy() > 0
    patch = predictor.configuration_manager.patch_size
    pad = lambda array: pad_to_patch(array, patch)  # noqa: E731
    padded = pad(data)
    slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    if len(slicers) != len(features):
        raise LLM4SegError(f"the booster ran {len(features)} times for {len(slicers)} tiles; explain expects one "
                           "network call per tile.")
    reference = pad(seg > 0)[0] if seg is not None else None
    return CaseRun(padded, pad(prediction[None])[0], reference, slicers, features)


def nearest_tile(run: CaseRun) -> int:
    """The tile whose centre is nearest the predicted foreground's centre (the case's centre if none)."""
    shape = run.padded_prediction.shape
    target = (np.argwhere(run.padded_prediction).mean(axis=0) if run.padded_prediction.any()
              else (np.array(shape) - 1) / 2)

    def centre(slicer: tuple) -> np.ndarray:
        return np.array([s if isinstance(s, int) else (s.start + s.stop - 1) / 2 for s in slicer[1:]])

    return int(np.argmin([np.linalg.norm(centre(s) - target) for s in run.slicers]))


def explain_case(predictor: Any, spec: BoosterSpec, case: tuple[np.ndarray, np.ndarray | None, dict], name: str,
                 query: str | None) -> Explanation:
    """Predict the case (image, reference or None, properties as read_case gives them) and explain the tile
    nearest the predicted object."""
    run = run_case(predictor, *case)
    index = nearest_tile(run)
    slicer = run.slicers[index]
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    device = predictor.device
    # the predictor's own autocast: fp16 on CUDA only
    autocast = torch.autocast(device.type) if device.type == "cuda" else contextlib.nullcontext()
    with autocast:
        trace = trace_booster(network.booster, run.features[index].to(device))
    prediction = run.padded_prediction[slicer[1:]]
    chosen = parse_query(query, trace.grid)
    query_token, source = (chosen, "--query") if chosen is not None else default_query(prediction, trace.grid)
    tile = [[s, s + 1] if isinstance(s, int) else [s.start, s.stop] for s in slicer[1:]]
    return Explanation(name, spec, trace,
                       run.padded_image[slicer][0], prediction,
                       run.padded_reference[slicer[1:]] if run.padded_reference is not None else None,
                       tile, query_token, source, gate_values(network.booster))


def gate_values(booster: torch.nn.Module) -> np.ndarray | None:
    return None if booster.gate is None else booster.gate.detach().float().cpu().numpy()


def summary(explanation: Explanation, files: dict[str, str]) -> dict[str, Any]:
    """The JSON written next to the picture."""
    spec = explanation.spec
    attention = torch.from_numpy(explanation.attention())
    foreground = torch.from_numpy(explanation.foreground_fraction())
    query_row = attention[:, explanation.query_index]
    heads = head_statistics(attention, explanation.grid, foreground)
    gate = explanation.gate
    contribution = explanation.trace.contribution()[0]
    return {
        "case": explanation.case,
        "model": {"family": spec.family, "layer": spec.layer, "source": spec.weights.source, "init": spec.init,
                  "trainable": spec.trainable, "attention": spec.attention, "positions": spec.positions,
                  "residual": spec.residual, "lora": spec.lora, "dtype": spec.dtype, "stage": spec.stage},
        "attention_mode": spec.attention,
        "position_mode": spec.positions,
        "token_grid": list(explanation.grid),
        "tokens": int(np.prod(explanation.grid)),
        "tile": explanation.tile,
        "query": {"token": list(reversed(explanation.query)), "order": "x,y" if len(explanation.grid) == 2 else "x,y,z",
                  "chosen_by": explanation.query_source},
        "foreground_area_share": float(foreground.mean()),
        "foreground_share": float(np.mean([head["foreground_share"] for head in heads])),
        "query_foreground_share": float((query_row @ foreground).mean()),
        **_reference_shares(explanation, attention),
        "mean_distance_tokens": float(np.mean([head["mean_distance_tokens"] for head in heads])),
        "entropy": float(np.mean([head["entropy"] for head in heads])),
        "uniform_entropy": float(np.log(attention.shape[-1])),
        "heads": heads,
        "contribution": {"mean": float(contribution.mean()), "max": float(contribution.max())},
        "gate": None if gate is None else {"mean_abs": float(np.abs(gate).mean()), "max_abs": float(np.abs(gate).max())},
        "mirroring": False,
        "files": files,
    }


def _reference_shares(explanation: Explanation, attention: torch.Tensor) -> dict[str, float]:
    """With a reference: its share of the tile's area and the (head- and query-averaged) share of attention on
    it, which unlike foreground_share does not depend on what the model predicted."""
    if explanation.reference is None:
        return {}
    reference = torch.from_numpy(explanation.foreground_fraction(explanation.reference))
    return {"reference_area_share": float(reference.mean()),
            "reference_share": float((attention.float() @ reference.float()).mean())}
