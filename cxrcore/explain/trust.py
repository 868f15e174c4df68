"""What a prediction needs to be read right: warnings about the model's training domain and how
to read a Monte-Carlo dropout spread.

Every surface that shows a model's numbers (Compare page, comparison panel PNG, ``cxr predict``,
the REST API, what the LLM is told) takes its warnings from here, so they say the same thing.

* A model trained only on synthetic phantoms, applied to an image that is not a phantom (phantoms
  carry the generator's mark, :data:`cxrcore.data.imageio.PHANTOM_MARK`): its outputs on a real
  film are not evidence of anything. The warning names the way out: a library model trained on
  real radiographs (with its "needs weights" state) or training on real data.
* A model trained on real radiographs (or library weights) applied to a phantom: the phantom is
  not what it was made for.
* A card that does not say what its model saw.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..data.imageio import LoadedImage


@dataclass(frozen=True)
class Notice:
    code: str    # stable identifier, e.g. "phantom_model_real_image"
    text: str    # the full sentence for pages, the CLI, the API and the LLM
    short: str   # one line for the comparison panel PNG

    def to_dict(self) -> dict:
        return {"code": self.code, "text": self.text}


def library_way_out(limit: int = 3) -> str:
    """"use a library model: xrv:densenet121-res224-all (ready) …" with each one's weights state."""
    try:
        from ..models.library import library_models

        models = library_models()
    except Exception:  # the listing is a convenience: a warning must never fail because of it
        models = []
    if not models:
        return "a model trained on real radiographs"
    shown = []
    for m in models[:limit]:
        state = "ready" if m.get("cached") else "needs weights"
        shown.append(f"{m['name']} ({state})")
    return "a library model trained on real radiographs, e.g. " + ", ".join(shown)


def domain_notices(card, image: LoadedImage | None, model_name: str = "") -> list[Notice]:
    """Warnings about applying the model of ``card`` to ``image`` (None: an array of unknown origin)."""
    kind = card.training_kind()
    who = model_name or card.name or "This model"
    synthetic = bool(image is not None and image.synthetic)
    summary = (card.trained_on or {}).get("summary", "")
    if kind == "phantom" and not synthetic:
        return [Notice(
            "phantom_model_real_image",
            f"{who} was trained only on synthetic phantoms and has never seen a real radiograph: on this image its "
            f"probabilities and heatmaps are not evidence of any finding. For a real film use "
            f"{library_way_out()}, or train on real data (Training page, `cxr train --data`).",
            f"{who}: trained on synthetic phantoms only - outputs on a real film mean nothing")]
    if kind in ("real", "library") and synthetic:
        return [Notice(
            "real_model_phantom_image",
            f"This image is a synthetic phantom; {who} was trained on {summary or 'real radiographs'} and was not made "
            "for phantoms, so its outputs here say little about how it reads real films.",
            f"{who}: trained on real films, this image is a synthetic phantom")]
    if kind == "unknown":
        return [Notice(
            "training_data_unknown",
            f"{who}'s card does not record what it was trained on; its outputs cannot be put in context.",
            f"{who}: training data not recorded")]
    return []


def uncertainty_note(injected_p: float, samples: int) -> tuple[str, str]:
    """(kind, sentence) saying how to read a Monte-Carlo dropout spread.

    ``injected_p`` > 0: the model has no trained dropout, so dropout of that rate was put in front
    of its classifier at inference only (:mod:`cxrcore.explain.uncertainty`).
    """
    if injected_p > 0:
        return ("injected", f"± is the spread of {samples} passes with dropout (p = {injected_p:g}) inserted before the "
                            "classifier of a model trained without dropout: a sensitivity proxy, not a calibrated "
                            "error bar or confidence interval.")
    return ("trained", f"± is the spread of {samples} passes with the model's own dropout layers active (it was "
                       "trained with dropout; Monte-Carlo dropout, Gal & Ghahramani 2016): an approximate "
                       "uncertainty, not a calibrated error bar or confidence interval.")
