"""The REST service's request and response models (pydantic): what the endpoints take and answer, and the
OpenAPI description generated from them."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

MAX_MC_SAMPLES = 50
SEED003_MC_SAMPLES = 20       # seed 003 answers with a Monte-Carlo mean and variance; the Compare page's 20 passes
MAX_BATCH = 8                 # images in one /predict/batch request (default; --max-batch)
MAX_VIEWS = 4                 # views in one /predict/study request


class _Image(BaseModel):
    """An image in a request: ``image`` (this service's name) or ``cxr_base64`` (seed 003's)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    image: str | None = Field(None, description="The PNG, JPEG or DICOM file, base64-encoded (a data: URL is "
                                                "accepted too).")
    cxr_base64: str | None = Field(None, description="Seed 003's name for `image`; a request that uses it is "
                                                     "answered in seed 003's shape unless `format` says otherwise.")
    name: str | None = Field(None, description="The file name (a hint for the format, shown in messages).")


class PredictRequest(_Image):
    model: str | None = Field(None, description="A model from GET /health's `models` (default: the first served).")
    format: Literal["cxr", "seed003"] | None = Field(
        None, description="The answer's shape: `cxr` (this service's) or `seed003` (`success`, `prediction_mean`, "
                          "`prediction_variance`, `heatmap`, `inference_duration`). Default: `seed003` when the "
                          "image came as `cxr_base64`, else `cxr`.")
    heatmaps: bool | None = Field(None, description="Every label's Grad-CAM heatmap as a base64 grayscale PNG "
                                                    "(default: false for `cxr`, true for `seed003`).")
    overlays: bool = Field(False, description="Every label's heatmap over the image with its boxes, as base64 PNG "
                                              "(`cxr` only).")
    mc_samples: int | None = Field(None, ge=0, le=MAX_MC_SAMPLES, description=(
        f"Monte-Carlo dropout passes (0: none). Default: 0 for `cxr`, {SEED003_MC_SAMPLES} for `seed003`, whose "
        "mean and variance come from these passes (at least 2 there)."))
    mc_seed: int = Field(0, description="Seed of the dropout masks (the same seed gives the same spread).")
    tta: bool = Field(False, description="Test-time augmentation inside the Monte-Carlo passes.")
    site: str | None = Field(None, max_length=64, description=(
        "The model as used at this site: its site profile's thresholds and temperatures (`cxr site fit`); the "
        "answer's `site` names the profile. Default: the model's own card."))

    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra={"examples": [
        {"image": "<base64 PNG>", "model": "baseline", "heatmaps": True, "mc_samples": 20},
        {"cxr_base64": "<base64 PNG>"}]})


_PREDICT_REQUEST_SCHEMA = WithJsonSchema({"$ref": "#/components/schemas/PredictRequest"})


class BatchRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    # items stay plain objects here and are validated one by one, so one bad item is reported as that item's
    # error instead of failing the whole batch; the schema still documents them as PredictRequest
    items: list[Annotated[dict, _PREDICT_REQUEST_SCHEMA]] = Field(
        ..., min_length=1, description=f"Up to {MAX_BATCH} /predict requests (the server's --max-batch).")


class StudyView(_Image):
    view: str | None = Field(None, max_length=40, description="`frontal`, `lateral`, ... (a lateral view is not "
                                                              "flagged for being asymmetric).")


class StudyRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    views: list[StudyView] = Field(..., min_length=2, max_length=MAX_VIEWS,
                                   description="The views of one study, e.g. the frontal and the lateral.")
    model: str | None = None
    fusion: Literal["mean", "max"] = Field("mean", description="How the views' probabilities make the study's "
                                                               "(seed 003): their mean or their maximum.")
    heatmaps: bool = False
    mc_samples: int = Field(0, ge=0, le=MAX_MC_SAMPLES, description="Monte-Carlo dropout passes per view.")
    mc_seed: int = 0


class LabelResult(BaseModel):
    probability: float
    threshold: float
    positive: bool
    calibrated: float | None = Field(None, description="Temperature-scaled probability, when the card has "
                                                       "temperatures.")
    mean: float | None = Field(None, description="Monte-Carlo dropout mean (with mc_samples).")
    variance: float | None = None
    std: float | None = None


class BoxResult(BaseModel):
    x: float
    y: float
    w: float
    h: float
    score: float
    model_config = ConfigDict(extra="allow")


class ImageInfo(BaseModel):
    format: str
    shape: list[int]
    notes: list[str]


class OODResult(BaseModel):
    is_suspect: bool
    score: float
    reasons: list[str]
    stats: dict[str, float]


class Timing(BaseModel):
    decode_ms: float
    ood_ms: float
    predict_ms: float
    render_ms: float
    total_ms: float
    base64_ms: float


class PredictResponse(BaseModel):
    model: str
    model_name: str
    labels: list[str]
    predictions: dict[str, LabelResult]
    positive: list[str]
    boxes: dict[str, list[BoxResult]]
    cam_method: str
    image: ImageInfo
    ood: OODResult
    warning: str | None = Field(description="The out-of-distribution warning alone (kept for older clients).")
    warnings: list[str] = Field(description="How (not) to read these outputs: a model trained on phantoms shown "
                                            "a real film, an image that does not look like a frontal chest film.")
    warning_codes: list[str]
    trained_on: str
    uncertainty: dict[str, Any] | None = None
    heatmaps: dict[str, str] | None = None
    overlays: dict[str, str] | None = None
    timing: Timing
    view: str | None = None
    # the same answer's keys as `cxr predict --json` gives them (cxrcore.results.prediction_json)
    probabilities: dict[str, float] | None = Field(None, description="Per label: the probability.")
    thresholds: dict[str, float] | None = Field(None, description="Per label: the decision threshold.")
    calibrated_probabilities: dict[str, float] | None = None
    prob_mean: dict[str, float] | None = None
    prob_std: dict[str, float] | None = None
    prob_var: dict[str, float] | None = None
    mc: dict[str, Any] | None = None
    image_shape: list[int] | None = None
    heatmap_shape: list[int] | None = None
    cam_grid: list[int] | None = Field(None, description="The feature map's cells the heatmaps come from.")
    seconds: float | None = Field(None, description="Seconds of the prediction itself.")
    notes: list[str] | None = Field(None, description="What the reader and the model did to the image (no DICOM "
                                                      "header values).")


class Seed003Response(BaseModel):
    success: Literal[True]
    prediction_mean: dict[str, float] = Field(description="Monte-Carlo dropout mean probability per label.")
    prediction_variance: dict[str, float] = Field(description="Monte-Carlo dropout variance per label.")
    heatmap: dict[str, str] = Field(description="Per label: the Grad-CAM heatmap as a base64 grayscale PNG "
                                                "(empty when heatmaps=false).")
    inference_duration: float = Field(description="Seconds from decoding the image to the answer.")
    model: str
    labels: list[str]
    thresholds: dict[str, float]
    mc_samples: int
    uncertainty_note: str
    warnings: list[str]
    warning_codes: list[str]
    ood: OODResult


class BatchItem(BaseModel):
    index: int
    ok: bool
    status: int
    result: PredictResponse | Seed003Response | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]
    succeeded: int
    failed: int
    seconds: float


class StudyLabel(BaseModel):
    probability: float
    threshold: float
    positive: bool


class StudyResponse(BaseModel):
    model: str
    model_name: str
    fusion: Literal["mean", "max"]
    labels: list[str]
    study: dict[str, StudyLabel]
    positive: list[str]
    views: list[PredictResponse]
    warnings: list[str]
    warning_codes: list[str]
    seconds: float


class ErrorResponse(BaseModel):
    error: str
    status: int
    success: Literal[False] = False


MAX_SIMILAR = 50


class SimilarRequest(_Image):
    index: str | None = Field(None, description="An index from GET /health's `indexes` (default: the first served).")
    k: int = Field(8, ge=1, le=MAX_SIMILAR, description="How many neighbours.")


class Neighbour(BaseModel):
    image_id: str
    distance: float = Field(description="1 - cosine similarity of the model's penultimate features.")
    labels: list[str] = Field(description="The dataset's positive labels of the film.")
    split: str = Field(description="The model's split the film belongs to (train / val / test).")
    probabilities: dict[str, float]


class SimilarResponse(BaseModel):
    neighbours: list[Neighbour]
    query: dict = Field(description="The model's `probabilities` for the image and the labels it `called`.")
    agreement: dict[str, int] = Field(description="Per label the model calls: how many of the k carry it.")
    k: int
    index: str
    model: str


class PriorRequest(BaseModel):
    """Two films of one patient: what changed since the prior (``cxr prior``)."""

    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra={"examples": [
        {"prior": {"image": "<base64 PNG>"}, "current": {"image": "<base64 PNG>"}, "model": "baseline",
         "mc_samples": 20}]})
    prior: _Image = Field(..., description="The earlier film.")
    current: _Image = Field(..., description="The later film of the same patient.")
    model: str | None = None
    site: str | None = Field(None, max_length=64, description="The model as used at this site (its thresholds).")
    mc_samples: int = Field(0, ge=0, le=MAX_MC_SAMPLES, description="Monte-Carlo dropout passes with test-time "
                                                                    "augmentation per film, for each change's spread.")
    mc_seed: int = 0
    deformable: bool = Field(True, description="Register with the B-spline step too (else similarity and affine).")


class ChangeResult(BaseModel):
    prior: float = Field(description="The model's probability on the prior.")
    current: float = Field(description="The model's probability on the current film.")
    delta: float = Field(description="current - prior.")
    call: Literal["new", "resolved", "worse", "better", "unchanged"]
    threshold: float = Field(description="The decision threshold (presence counts from min(threshold, 0.5)).")
    change_threshold: float = Field(description="The label's change threshold.")
    delta_sd: float | None = Field(None, description="The spread of delta (with mc_samples).")
    interval: list[float] | None = Field(None, description="delta +- 1.96 sd.")
    confident: bool | None = Field(None, description="Whether the interval stays on one side of the change "
                                                     "threshold.")


class PriorResponse(BaseModel):
    labels: dict[str, ChangeResult]
    registration: dict = Field(description="ncc_before, ncc_after, ok, warning, caution, steps, the current film's "
                                           "rotation_deg / scale / shift_px against the prior, seconds.")
    model: str
    changed: list[str] = Field(description="The labels called changed, largest change first.")
    calls: list[str]
    change_thresholds: str = Field(description="Whether the change thresholds were tuned for this model.")
    uncertainty: dict | None = None
    out_of_distribution: dict
    seconds: dict


class HealthResponse(BaseModel):
    status: Literal["ok"]
    models: list[str] | None = None
    sites: dict[str, list[str]] | None = None
    indexes: dict[str, str] | None = Field(None, description="Index name -> the model whose eyes it was built with "
                                                             "(POST /similar).")
    default_model: str | None = None
    labels: dict[str, list[str]] | None = None
    display_names: dict[str, str] | None = None
    trained_on: dict[str, str] | None = None
    device: str | None = None
    max_bytes: int | None = None
    max_image_bytes: int | None = None
    max_mc_samples: int | None = None
    max_batch: int | None = None
    pid: int | None = Field(None, description="The worker process that answered (with --workers N).")
    details: str | None = Field(None, description="Set when a token is required and was not sent.")
