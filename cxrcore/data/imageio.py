"""Read PNG, JPEG, DICOM (and TIFF/BMP/GIF/WebP) files or uploads as grayscale radiographs.

``read_image`` returns a :class:`LoadedImage` whose ``pixels`` are 2-D float32 in [0, 1] with
0 = black (air) and 1 = white (bone), in display orientation. Every failure a user can cause
raises :class:`~cxrcore.errors.ImageError` with a message saying what to do. No DICOM metadata
that could identify a patient is returned, logged or put in a message; nothing is written to disk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageError

MIN_SIDE = 32
MAX_PIXELS = 50_000_000
ACCEPTED = "PNG, JPEG or DICOM (.dcm)"
_PIL_FORMATS = ["PNG", "JPEG", "MPO", "TIFF", "BMP", "GIF", "WEBP"]  # MPO: JPEG opens it
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"GIF8")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's convert("L")
_PHOTOMETRIC = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT",
                "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR"}


@dataclass
class LoadedImage:
    """A decoded radiograph and non-identifying facts about how it was read."""

    pixels: np.ndarray
    source_format: str
    bit_depth: int
    original_shape: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    synthetic: bool = False   # carries cxrcore's phantom mark: a generated phantom, not a radiograph


# Written into every phantom image (a PNG text chunk / a JPEG comment) by cxrcore.data.phantom, so
# that a phantom is told apart from a real film wherever it is uploaded. It is provenance, not
# security: re-saving an image may drop it, and then the image counts as real (the cautious side).
PHANTOM_MARK_KEY = "cxr-phantom"
PHANTOM_MARK = "cxrcore synthetic chest phantom, not a radiograph"


def has_phantom_mark(info: dict) -> bool:
    """Whether PIL's ``Image.info`` of a PNG or JPEG holds the phantom mark."""
    comment = info.get("comment", b"")
    comment = comment.decode("latin-1", "replace") if isinstance(comment, bytes) else str(comment)
    return info.get(PHANTOM_MARK_KEY) == PHANTOM_MARK or comment == PHANTOM_MARK


def read_image(source: str | os.PathLike | bytes, name: str | None = None) -> LoadedImage:
    """Read a file path or the raw bytes of an upload (``name`` is used in messages and as a hint)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        name = name or path.name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"File not found: {path}. Check the path and try again.") from None
        except IsADirectoryError:
            raise ImageError(f"{path} is a folder, not an image file; choose a {ACCEPTED} file.") from None
        except OSError as exc:
            raise ImageError(f"Could not read {path}: {exc.strerror or exc}.") from None
    label = f'"{name}"' if name else "the upload"
    if not data:
        raise ImageError(f"The upload is empty (0 bytes): {label}. Choose the file again, or "
                         f"re-export it as {ACCEPTED}.")
    hint_dicom = bool(name) and name.lower().endswith((".dcm", ".dicom"))
    is_dicom = data[128:132] == b"DICM"  # checked first: a preamble may look like TIFF
    if not is_dicom and (data.startswith(_IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")):
        return _read_pil(data, label)
    if is_dicom or hint_dicom or data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x08"):
        try:
            return _read_dicom(data, label)
        except ImageError:
            raise
        except Exception:  # malformed values in an otherwise readable file; pydicom's text may quote them
            raise _error(f"{label} is a malformed DICOM file that could not be decoded; export it "
                         f"again as {ACCEPTED}.") from None
    raise _error(f"{label} is {_describe(data)}, not an image; upload a chest X-ray as {ACCEPTED}.")


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map a 2-D float image in [0, 1] to uint8 0-255 (values outside are clipped, NaN -> 0)."""
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8))


def _error(message: str) -> ImageError:
    return ImageError(message[:1].upper() + message[1:])


def _describe(data: bytes) -> str:
    if data.startswith(b"%PDF"):
        return "a PDF document"
    if data.startswith(b"PK\x03\x04"):
        return "a ZIP archive (or Office document)"
    head = data[:4096]
    text = head.decode("utf-8", "ignore")  # a cut at 4096 may split one character
    printable = sum(c.isprintable() or c.isspace() for c in text)
    if len(text.encode()) >= len(head) - 3 and printable > 0.95 * len(text):
        return "a text file"
    return "not a recognised image format"


def _check_size(width: int, height: int, label: str) -> None:
    if width * height > MAX_PIXELS:
        raise _error(f"{label} is {width}×{height} pixels ({width * height / 1e6:.0f} megapixels), above "
                     f"the {MAX_PIXELS // 1_000_000} megapixel limit; downscale it and upload again.")
    if min(width, height) < MIN_SIDE:
        raise _error(f"{label}: {width}×{height} pixels is too small to be a radiograph; "
                     f"need at least {MIN_SIDE}×{MIN_SIDE}.")


def _finish(arr: np.ndarray, fmt: str, bits: int, notes: list[str]) -> LoadedImage:
    arr = np.ascontiguousarray(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0), dtype=np.float32)
    if arr.size and arr.min() == arr.max():
        notes.append("constant image (all pixels equal)")
    return LoadedImage(arr, fmt, int(bits), (int(arr.shape[0]), int(arr.shape[1])), notes)


def _minmax(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64, copy=False)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    return np.zeros(arr.shape) if hi <= lo else (arr - lo) / (hi - lo)


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ _LUMA


# --------------------------------------------------------------------------- PIL formats
def _read_pil(data: bytes, label: str) -> LoadedImage:
    corrupt = (f"{label} is truncated or corrupt and could not be decoded; re-export or download "
               f"it again and upload it as {ACCEPTED}.")
    Image.init()  # Image.open(formats=...) raises KeyError for names not registered
    try:
        im = Image.open(BytesIO(data), formats=[f for f in _PIL_FORMATS if f in Image.OPEN])
    except Image.DecompressionBombError:
        raise _error(f"{label} declares more than {MAX_PIXELS // 1_000_000} megapixels and was refused "
                     f"as a possible decompression bomb; downscale it and upload again.") from None
    except Exception:
        raise _error(corrupt) from None
    fmt = "JPEG" if im.format == "MPO" else str(im.format)
    _check_size(*im.size, label)  # header size, before decoding
    synthetic = has_phantom_mark(im.info)
    notes: list[str] = []
    try:
        if getattr(im, "n_frames", 1) > 1:
            notes.append(f"first of {im.n_frames} frames used")
        im.load()
        orientation = im.getexif().get(0x0112)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            im = ImageOps.exif_transpose(im)
            notes.append(f"EXIF orientation applied ({orientation})")
        arr, bits = _pil_to_gray(im, notes)
    except Image.DecompressionBombError:
        raise _error(f"{label} is above the {MAX_PIXELS // 1_000_000} megapixel limit; "
                     f"downscale it and upload again.") from None
    except MemoryError:
        raise _error(f"{label} is too large to decode in memory; downscale it and upload again.") from None
    except Exception:
        raise _error(corrupt) from None
    finally:
        im.close()
    if synthetic:
        notes.append("synthetic phantom (cxrcore's generator)")
    out = _finish(arr, fmt, bits, notes)
    out.synthetic = synthetic
    return out


def _pil_to_gray(im: Image.Image, notes: list[str]) -> tuple[np.ndarray, int]:
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float32) / 65535.0, 16
    if mode == "I":
        arr = np.asarray(im)
        if arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.float32) / 65535.0, 16
        notes.append("32-bit integer image scaled min–max")
        return _minmax(arr), 32
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        if arr.min() < 0 or arr.max() > 1:
            notes.append("floating-point image scaled min–max")
            arr = _minmax(arr)
        return arr, 32
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        notes.append("palette image expanded")
    elif mode in ("PA", "La"):
        im = im.convert("RGBA" if mode == "PA" else "LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode not in ("1", "L", "LA", "RGB", "RGBA", "RGBX"):
        im = im.convert("RGB")
        notes.append(f"{mode} converted to RGB")
    mode = im.mode
    arr = np.asarray(im.convert("L") if mode == "1" else im)
    if arr.ndim == 2:
        return arr.astype(np.float32) / 255.0, 8
    gray = arr[..., 0].astype(np.float32) if mode == "LA" else _to_gray(arr)
    if mode in ("RGB", "RGBA", "RGBX"):
        notes.append("RGB converted to grayscale")
    if mode in ("LA", "RGBA"):
        alpha = arr[..., -1]
        if alpha.min() < 255:
            gray = gray * (alpha.astype(np.float32) / 255.0)
            notes.append("transparency composited on black")
        else:
            notes.append("opaque alpha channel dropped")
    return gray / 255.0, 8


# --------------------------------------------------------------------------- DICOM
def _read_dicom(data: bytes, label: str) -> LoadedImage:
    import pydicom
    from pydicom import pixels
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:  # messages never quote pydicom's exceptions: they may contain element values
        ds = pydicom.dcmread(BytesIO(data), force=True)
        looks_dicom = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData",
                                            "SOPClassUID", "Rows", "Modality"))
    except Exception:
        looks_dicom = False
    if not looks_dicom:
        raise _error(f"{label} could not be read as DICOM: it is truncated, corrupt or not a DICOM "
                     f"file; export it again as {ACCEPTED}.")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _error(f"{label} is a DICOM file with no image in it (for example a structured report "
                     f"or presentation state); upload an image DICOM such as a CR or DX radiograph.")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        frames = int(ds.get("NumberOfFrames") or 1)
    except Exception:
        raise _error(f"{label} is an incomplete DICOM image (rows, columns or pixel description "
                     f"missing or invalid); export it again.") from None
    _check_size(cols, rows, label)
    notes: list[str] = []
    meta = ds.file_meta if hasattr(ds, "file_meta") else None
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None:  # forced read without file meta: infer from how the dataset was encoded
        ts = ImplicitVRLittleEndian if ds.original_encoding == (True, True) else ExplicitVRLittleEndian
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = ts
    ts = UID(ts)
    ts_name = ts.name if ts.is_transfer_syntax else "unrecognised transfer syntax"
    notes.append(f"DICOM transfer syntax: {ts_name}")
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality.replace("_", "").isalnum() and len(modality) <= 16:
        notes.append(f"modality {modality}")
    if photometric in _PHOTOMETRIC:
        notes.append(f"photometric interpretation {photometric}")
    if frames > 1:
        notes.append(f"first of {frames} frames used")
    try:
        arr = pixels.pixel_array(ds, index=0)
    except MemoryError:
        raise _error(f"{label} is too large to decode in memory.") from None
    except Exception as exc:
        if not ts.is_compressed:
            raise _error(f"{label} has truncated or corrupt pixel data; export it again.") from None
        raise _error(f"{label} uses {ts_name} compression, which could not be decoded (corrupt data "
                     f"or no installed decoder); export it uncompressed or as PNG.") from exc
    if arr.ndim == 2 and photometric == "PALETTE COLOR":
        arr = pixels.apply_color_lut(arr, ds)
        notes.append("palette colour expanded")
        bits = 16 if arr.dtype == np.uint16 else 8
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        notes.append("RGB converted to grayscale")
        return _finish(_to_gray(arr) / float(2**bits - 1), "DICOM", bits, notes)
    if arr.ndim != 2:
        raise _error(f"{label} has pixel data of unexpected shape; upload a single 2-D radiograph.")
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        try:
            arr = pixels.apply_modality_lut(arr, ds)
            notes.append("modality LUT applied")
        except Exception:
            notes.append("modality LUT invalid and ignored")
    out = _apply_voi(arr, ds, notes)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
        notes.append("MONOCHROME1 inverted")
    return _finish(out, "DICOM", bits, notes)


def _apply_voi(arr: np.ndarray, ds, notes: list[str]) -> np.ndarray:
    """VOI LUT or window scaled to [0, 1] by its output range; min–max when there is none."""
    from pydicom.pixels.processing import apply_voi, apply_windowing

    try:
        if ds.get("VOILUTSequence"):
            out = apply_voi(arr, ds, index=0).astype(np.float64)
            notes.append("VOI LUT applied")
            return _minmax(out)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            out = apply_windowing(arr.astype(np.float64), ds, index=0)
            with np.errstate(over="ignore", invalid="ignore"):
                lo, hi = sorted(apply_windowing(np.array([-1e12, 1e12]), ds, index=0).tolist())
            if hi > lo:
                notes.append("VOI LUT applied (window centre/width)")
                return (out - lo) / (hi - lo)
    except Exception:
        notes.append("VOI window invalid and ignored")
    notes.append("scaled min–max (no VOI window)")
    return _minmax(arr)
