"""A checkpoint exported to ONNX and run by ONNX Runtime, for scoring whole archives on the CPUs people have
(issue 22 §4; ``cxr score --runtime onnx``, the default where it exports).

:func:`export_onnx` writes the network *with* its input normalisation and sigmoid (uint8 squares in,
probabilities out), so the runtime gets exactly what :meth:`cxrcore.predictor.Predictor.predict_squares` computes
and nothing in Python stands between the decoded image and the answer. The file is kept in the workspace's cache
under the digest of the weights, architecture and preprocessing (new weights, a new file; new thresholds or a site
profile, the same file), with the torch and opset versions in its name.
:class:`OnnxScorer` answers the part of the Predictor's interface that :func:`cxrcore.score.score` uses (``card``,
``labels``, ``prep``, ``predict_squares``), two-stage models' gate applied the same way.

ONNX Runtime was picked over OpenVINO and PyTorch eager by measurement (``bench/score.py``,
``bench/RESULTS.md``). Its probabilities equal PyTorch's within 1e-4 (``tests/pacs/test_runtime.py``). A model
the exporter cannot take (an unsupported operator) is scored by PyTorch, and the summary says why.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .errors import CXRError

RUNTIMES = ("onnx", "torch")   # what `cxr score --runtime` offers; the first is the default
OPSET = 18


class ExportError(CXRError):
    """The model could not be exported (or the exported file not loaded): the caller falls back to PyTorch."""


def _split_head(model) -> bool:
    return all(hasattr(model, a) for a in ("forward_features", "forward_head"))


def _scored_module(predictor):
    import torch

    from .inference import EMBED_DIM

    split = _split_head(predictor.model)
    if split:
        features = int(predictor.model.forward_head(predictor.model.forward_features(
            predictor.prep.normalize(torch.zeros((1, predictor.prep.size, predictor.prep.size), dtype=torch.uint8))),
            pre_logits=True).flatten(1).shape[1])
        projection = torch.from_numpy(_projection(features, EMBED_DIM))

    class Scored(torch.nn.Module):
        """uint8 (B, S, S) squares -> sigmoid probabilities (B, L) (the Predictor's path without TTA) and, for a
        model with a split head, the penultimate-layer embedding as :meth:`Predictor.score_squares` projects it."""

        def __init__(self):
            super().__init__()
            self.model = predictor.model
            if split:
                self.register_buffer("projection", projection)

        def forward(self, squares):
            x = predictor.prep.normalize(squares)
            if not split:
                return torch.sigmoid(self.model(x).float())
            feats = self.model.forward_features(x)
            pooled = self.model.forward_head(feats, pre_logits=True).flatten(1).float()
            return torch.sigmoid(self.model.forward_head(feats).float()), pooled @ self.projection

    return Scored().eval(), split


def _projection(features: int, dim: int) -> np.ndarray:
    from .inference import project_embedding

    return project_embedding(np.eye(features, dtype=np.float32), dim)


def network_digest(card) -> str:
    """What the exported network depends on: the weights, the architecture and the preprocessing (not the
    thresholds, temperatures or site profiles, which act on its output)."""
    import hashlib
    import json

    what = {"weights": card.weights_sha256, "model": card.model, "preprocess": card.preprocess, "labels": card.labels}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def onnx_path(predictor, folder: str | os.PathLike | None = None) -> Path:
    """Where the export of ``predictor``'s network lives: the cache, named by :func:`network_digest`."""
    import torch

    from . import workspace

    base = Path(folder) if folder is not None else workspace.cache() / "onnx"
    version = torch.__version__.split("+")[0]
    emb = "-emb" if _split_head(predictor.model) else ""   # the file answers the embedding too
    return base / f"{network_digest(predictor.card)[:16]}-torch{version}-opset{OPSET}{emb}.onnx"


def export_onnx(predictor, path: str | os.PathLike | None = None) -> Path:
    """The ONNX file of ``predictor`` (written when missing; written whole, then renamed into place)."""
    import torch

    path = Path(path) if path is not None else onnx_path(predictor)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    size = int(predictor.prep.size)
    example = torch.zeros((2, size, size), dtype=torch.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():   # the tracer's notes on constants: the normalisation's, constant indeed
            warnings.simplefilter("ignore")
            module, split = _scored_module(predictor)
            torch.onnx.export(module, (example,), str(tmp), input_names=["squares"],
                              output_names=["probs", "embedding"] if split else ["probs"], opset_version=OPSET,
                              dynamo=True, verbose=False, dynamic_shapes=({0: torch.export.Dim("batch")},))
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - any exporter failure means: score with PyTorch instead
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{predictor.name} could not be exported to ONNX ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}).") from None
    return path


class OnnxScorer:
    """``predictor``'s network on ONNX Runtime (CPU), with ``threads`` intra-op threads."""

    runtime = "onnx"

    def __init__(self, predictor, threads: int = 0, path: str | os.PathLike | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ExportError(f"ONNX Runtime is not installed ({exc}); `pip install -r requirements.txt`.") from None
        self.predictor = predictor
        self.card, self.labels, self.prep = predictor.card, predictor.labels, predictor.prep
        self.path = export_onnx(predictor, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or max(1, (os.cpu_count() or 2) // 2))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a file another version wrote, a truncated file
            raise ExportError(f"ONNX Runtime cannot load {self.path.name} ({type(exc).__name__}).") from None

    @property
    def name(self) -> str:
        return self.predictor.name

    def score_squares(self, squares: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
        """What :meth:`cxrcore.predictor.Predictor.score_squares` answers: probabilities and the embedding (None
        when the export has none)."""
        from .predictor import combine

        outputs = [o.name for o in self.session.get_outputs()]
        if "embedding" not in outputs:
            return self.predict_squares(squares, batch_size=batch_size), None
        probs, embs = [], []
        for k in range(0, len(squares), max(1, batch_size)):
            p, e = self.session.run(["probs", "embedding"], {"squares": np.ascontiguousarray(
                squares[k:k + batch_size], dtype=np.uint8)})
            probs.append(combine(p, self.card.model, self.card.thresholds))
            embs.append(e)
        if not probs:
            return np.zeros((0, len(self.labels)), np.float32), None
        return np.concatenate(probs), np.concatenate(embs)

    def predict_squares(self, squares: np.ndarray, batch_size: int = 64, progress=None, raw: bool = False,
                        tta: str = "none") -> np.ndarray:
        """What :meth:`cxrcore.predictor.Predictor.predict_squares` answers (no test-time augmentation here)."""
        from .predictor import combine

        if tta != "none":
            raise CXRError("The ONNX runtime scores without test-time augmentation; use --runtime torch for it.")
        out, n = [], len(squares)
        for k in range(0, n, max(1, batch_size)):
            p = self.session.run(["probs"], {"squares": np.ascontiguousarray(squares[k:k + batch_size],
                                                                             dtype=np.uint8)})[0]
            out.append(p if raw else combine(p, self.card.model, self.card.thresholds))
            if progress:
                progress(min(n, k + batch_size), n)
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)


def scorer(predictor, runtime: str = RUNTIMES[0], threads: int = 0):
    """(the object that scores, the runtime it uses, why not the one asked for or None): ONNX Runtime where asked
    and the model exports, else the Predictor itself (PyTorch)."""
    if runtime not in RUNTIMES:
        raise CXRError(f"Unknown runtime {runtime!r}; use {' or '.join(RUNTIMES)}.")
    if runtime == "torch":
        return predictor, "torch", None
    try:
        return OnnxScorer(predictor, threads), "onnx", None
    except ExportError as exc:
        return predictor, "torch", str(exc)
