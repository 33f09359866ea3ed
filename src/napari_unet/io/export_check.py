"""Export a model file and check the result, as ``napari-unet export --check`` and 5 Export do.

:func:`check_export` gives one verdict for an exported file:

* a bioimage.io package is tested by **bioimageio.core**'s ``test_model`` when that package is
  installed (format validation, every weight format reproduces the test output, runs at several
  tile sizes and batches), else by bioimageio.spec's validator plus our own reproduction check
  when only bioimageio.spec is installed, else by **our own check** alone (``rdf.yaml`` readable,
  every file it lists present with its SHA-256, the TorchScript weights, and the ONNX weights
  when onnxruntime is installed, reproduce the test output from the test input) — the verdict
  says plainly which checker ran;
* an ONNX file by ``onnx.checker`` (full check) and, with onnxruntime, by comparing its output
  with the model file's network;
* a TorchScript file by loading it with ``torch.jit.load`` and comparing its output with the
  model file's network.

:func:`export_job` is the Qt-free worker generator of the 5 Export widget: export (the same
:func:`napari_unet.io.export.export_model` as the CLI), then check.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TOLERANCE = 1e-4  # largest absolute difference accepted between two runs of the same network


@dataclass(frozen=True)
class ExportCheck:
    """The verdict on an exported file.

    passed : whether every check passed.
    checker : what checked it, e.g. ``"bioimageio.core 0.11.0 test_model"``.
    verdict : one line for the user: checker, passed/failed and what was checked.
    details : the failed checks (and warnings), one line each.
    """

    passed: bool
    checker: str
    verdict: str
    details: tuple[str, ...] = ()


def installed(module: str) -> bool:
    """Whether ``module`` (e.g. ``"bioimageio.core"``) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def checker_note() -> str:
    """Which checker will judge a bioimage.io package here, in words."""
    if installed("bioimageio.core"):
        return "checked by bioimageio.core's model test after export"
    if installed("bioimageio.spec"):
        return (
            "checked by bioimageio.spec's validator and napari-unet's own test (bioimageio.core "
            "is not installed: pip install 'napari-unet[export]')"
        )
    return (
        "checked by napari-unet's own test only: the bioimage.io tools are not installed "
        "(pip install 'napari-unet[export]')"
    )


def check_export(
    path: str | os.PathLike, fmt: str, model_path: str | os.PathLike | None = None
) -> ExportCheck:
    """Check an exported file (see the module docstring); never raises for a bad file.

    Parameters
    ----------
    path : the exported file.
    fmt : ``"bioimageio"``, ``"onnx"`` or ``"torchscript"``.
    model_path : the model file it was exported from (ONNX and TorchScript outputs are compared
        with its network; without it they are only loaded and run).
    """
    path, fmt = Path(path), str(fmt).lower()
    try:
        if fmt == "bioimageio":
            if installed("bioimageio.core"):
                return _bioimageio_core_check(path)
            if installed("bioimageio.spec"):
                return _bioimageio_spec_check(path)
            return own_bioimageio_check(path, why="bioimageio.core is not installed")
        if fmt == "onnx":
            return _onnx_check(path, model_path)
        if fmt == "torchscript":
            return _torchscript_check(path, model_path)
    except Exception as exc:  # noqa: BLE001 - a broken file is a failed check, not a crash
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return ExportCheck(False, f"{fmt} check", f"{fmt} check: failed ({reason})", (reason,))
    raise ValueError(f"unknown export format {fmt!r}")


# --------------------------------------------------------------------------------------------
# bioimage.io
# --------------------------------------------------------------------------------------------


def _bioimageio_core_check(path: Path) -> ExportCheck:
    import bioimageio.core

    checker = f"bioimageio.core {bioimageio.core.__version__} test_model"
    summary = bioimageio.core.test_model(path)
    details = tuple(
        f"{d.name}: " + "; ".join(str(e.msg) for e in d.errors)
        for d in summary.details
        if d.status != "passed"
    )
    warnings = tuple(f"warning: {w.loc}: {w.msg}" for d in summary.details for w in d.warnings)
    passed = summary.status == "passed"
    n = len(summary.details)
    if passed:
        what = f"all {n} checks passed (format valid, every weight format reproduces the test "
        what += "output)"
    else:
        what = f"{len(details)} of {n} checks failed: {details[0] if details else summary.status}"
    verdict = f"{checker}: {'passed' if passed else 'FAILED'}, {what}"
    if warnings:
        verdict += f"; {len(warnings)} warning(s)"
    return ExportCheck(passed, checker, verdict, details + warnings)


def _bioimageio_spec_check(path: Path) -> ExportCheck:
    import bioimageio.spec

    description = bioimageio.spec.load_description(path, perform_io_checks=True)
    summary = description.validation_summary
    valid = summary.status == "valid-format"
    own = own_bioimageio_check(path, why="bioimageio.core is not installed")
    checker = f"bioimageio.spec {bioimageio.spec.__version__} validator + napari-unet"
    spec = "format valid" if valid else f"format {summary.status}"
    passed = valid and own.passed
    verdict = (
        f"{checker}: {'passed' if passed else 'FAILED'} ({spec}; {own.verdict}); "
        "bioimageio.core is not installed, so its model test did not run"
    )
    details = own.details if valid else (summary.format()[:2000], *own.details)
    return ExportCheck(passed, checker, verdict, details)


def own_bioimageio_check(path: str | os.PathLike, why: str = "") -> ExportCheck:
    """napari-unet's own check of a bioimage.io package (the fallback without bioimageio.core).

    ``rdf.yaml`` is read, every file it names is in the zip with its SHA-256, and the TorchScript
    weights (and the ONNX weights, when onnxruntime is installed) turn the test input, after the
    declared preprocessing, into the test output. ``why`` says why the official test did not run.
    """
    import yaml

    from napari_unet.io.export import _apply

    checker = "napari-unet's own check"
    problems: list[str] = []
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    rdf = yaml.safe_load(members.get("rdf.yaml", b"{}")) or {}
    if rdf.get("type") != "model":
        problems.append("rdf.yaml is missing or does not describe a model")
    files = _listed_files(rdf)
    for name, digest in files.items():
        if name not in members:
            problems.append(f"{name}: listed in rdf.yaml but not in the package")
        elif digest and hashlib.sha256(members[name]).hexdigest() != digest:
            problems.append(f"{name}: its SHA-256 differs from rdf.yaml's")
    ran: list[str] = []
    if not problems:
        spec_in, spec_out = rdf["inputs"][0], rdf["outputs"][0]
        raw = _npy(members[spec_in["test_tensor"]["source"]])
        expected = _npy(members[spec_out["test_tensor"]["source"]])
        x = _apply(spec_in.get("preprocessing") or [], raw).astype(np.float32)
        for fmt, run in _runners(rdf, members).items():
            got = run(x)
            ran.append(fmt)
            if got.shape != expected.shape or not np.allclose(got, expected, atol=TOLERANCE):
                problems.append(f"{fmt} weights do not reproduce the test output")
    passed = not problems
    what = (
        f"the {len(files)} files rdf.yaml lists are there (with their SHA-256), "
        + " and ".join(ran or ["no"])
        + " weights reproduce the test output"
        if passed
        else problems[0]
    )
    note = f" ({why}; this is not the official bioimage.io test)" if why else ""
    verdict = f"{checker}{note}: {'passed' if passed else 'FAILED'}, {what}"
    return ExportCheck(passed, checker, verdict, tuple(problems))


def _listed_files(rdf: dict) -> dict[str, str]:
    """``{member: sha256}`` of every file description in ``rdf`` (sha256 may be "")."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            source = node.get("source")
            if isinstance(source, str) and "sha256" in node:
                found[source] = str(node.get("sha256") or "")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk({k: v for k, v in rdf.items() if k != "config"})
    named = [*(rdf.get("covers") or []), rdf.get("documentation")]  # files without a hash
    for name in named:
        if isinstance(name, str) and "://" not in name:
            found.setdefault(name, "")
    return found


def _npy(data: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(data), allow_pickle=False)


def _runners(rdf: dict, members: dict[str, bytes]) -> dict[str, Any]:
    """Callables running each weight format of the package that can run here."""
    import io

    import torch

    weights = rdf.get("weights") or {}
    runners: dict[str, Any] = {}
    if "torchscript" in weights:
        net = torch.jit.load(io.BytesIO(members[weights["torchscript"]["source"]]), "cpu")

        def run_torchscript(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return net(torch.from_numpy(x)).numpy()

        runners["TorchScript"] = run_torchscript
    if "onnx" in weights and installed("onnxruntime"):
        session = _onnx_session(members[weights["onnx"]["source"]])
        runners["ONNX"] = lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]
    return runners


def _onnx_session(model: bytes):
    import onnxruntime

    return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------
# ONNX and TorchScript
# --------------------------------------------------------------------------------------------


def _reference(model_path: str | os.PathLike | None):
    """(network, example input) of the model file, or (None, None) without one."""
    if model_path is None:
        return None, None
    from napari_unet.io.export import _example, default_tile
    from napari_unet.io.modelfile import load_model

    model, metadata = load_model(model_path, "cpu")
    cfg = metadata.architecture
    return model.eval(), _example(cfg, default_tile(cfg)).numpy()


def _compare(got: np.ndarray, model, x: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max())


def _onnx_check(path: Path, model_path) -> ExportCheck:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    checker = f"onnx {onnx.__version__} checker"
    if not installed("onnxruntime"):
        return ExportCheck(
            True,
            checker,
            f"{checker}: passed (valid model); onnxruntime is not installed, so the network "
            "was not run",
        )
    model, x = _reference(model_path)
    if model is None:
        return ExportCheck(True, checker, f"{checker}: passed (valid model)")
    session = _onnx_session(path.read_bytes())
    diff = _compare(session.run(None, {session.get_inputs()[0].name: x})[0], model, x)
    passed = diff <= TOLERANCE
    checker += " + onnxruntime"
    what = f"its output equals the model's (largest difference {diff:.1e})"
    if not passed:
        what = f"its output differs from the model's by up to {diff:.1e}"
    return ExportCheck(passed, checker, f"{checker}: {'passed' if passed else 'FAILED'}, {what}")


def _torchscript_check(path: Path, model_path) -> ExportCheck:
    import torch

    net = torch.jit.load(str(path), "cpu")
    checker = "torch.jit.load"
    model, x = _reference(model_path)
    if model is None:
        return ExportCheck(True, checker, f"{checker}: passed (the file loads)")
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    diff = _compare(got, model, x)
    passed = diff <= TOLERANCE
    what = (
        f"its output equals the model's (largest difference {diff:.1e})"
        if passed
        else f"its output differs from the model's by up to {diff:.1e}"
    )
    return ExportCheck(passed, checker, f"{checker}: {'passed' if passed else 'FAILED'}, {what}")


# --------------------------------------------------------------------------------------------
# the 5 Export widget's worker
# --------------------------------------------------------------------------------------------


@dataclass
class ExportRequest:
    """One export from the widget: the arguments of :func:`napari_unet.io.export.export_model`
    (as the CLI passes them) and whether to check the result."""

    model_path: Path
    fmt: str
    out: Path
    tile: int | None = None
    training_data: str | None = None
    authors: list[str] | None = None
    sample: Any = None
    onnx_weights: bool | None = None
    check: bool = True


def export_job(request: ExportRequest) -> Iterator[tuple]:
    """Worker generator: export, then check. Yields ``("status", text)``, ``("exported", path,
    summary)``, ``("checked", ExportCheck)`` and, instead of raising, ``("error", exception)``."""
    from napari_unet.io.export import export_model, export_summary

    try:
        yield ("status", f"exporting {request.model_path.name} as {request.fmt} ...")
        path = export_model(
            request.model_path,
            request.fmt,  # type: ignore[arg-type]
            request.out,
            request.tile,
            training_data=request.training_data,
            authors=request.authors,
            sample=request.sample,
            onnx_weights=request.onnx_weights if request.fmt == "bioimageio" else None,
        )
        yield ("exported", path, export_summary(request.model_path, request.fmt, path))  # type: ignore[arg-type]
        if request.check:
            yield ("status", f"checking {path.name} ...")
            yield ("checked", check_export(path, request.fmt, request.model_path))
    except Exception as exc:  # noqa: BLE001 - shown on the main thread, never re-raised
        yield ("error", exc)
