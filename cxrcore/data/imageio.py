"""Read PNG, JPEG, DICOM (and TIFF/BMP/GIF/WebP) files or uploads as grayscale radiographs.

``read_image`` returns a :class:`LoadedImage` whose ``pixels`` are 2-D float32 in [0, 1] with
0 = black (air) and 1 = white (bone), in display orientation. Every failure a user can cause
raises :class:`~cxrcore.errors.ImageError` with a message saying what to do. No DICOM metadata
that could identify a patient is returned, logged or put in a message; nothing is written to disk.

Decompression bombs (a small file that decodes to a huge one) are refused before the memory is spent:
every declared size is checked against :data:`MAX_PIXELS` / :data:`MAX_PIXEL_BYTES` before pixels are
decoded (PIL: the header's size right after ``Image.open``; DICOM: Rows x Columns x frames, and the
frame header inside JPEG / JPEG-LS / JPEG 2000 / RLE data), a Deflated DICOM is inflated through a
capped stream (no more than its declared image needs plus :data:`HEADER_ALLOWANCE`), and a segmented
palette lookup table is measured before it is expanded. No library global is changed.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageError

MIN_SIDE = 32
MAX_PIXELS = 50_000_000              # per image (PIL: the frame read; DICOM: Rows x Columns x frames)
MAX_PIXEL_BYTES = 4 * MAX_PIXELS     # a DICOM's declared pixel data, all frames: 50 MP at 16-bit gray or 8-bit RGB
HEADER_ALLOWANCE = 16 * 2**20        # bytes a Deflated DICOM may inflate to beyond its declared pixel data
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
    label = _label(name)
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


def _label(name: str | None) -> str:
    return f'"{name}"' if name else "the upload"


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
def _corrupt(label: str) -> str:
    return (f"{label} is truncated or corrupt and could not be decoded; re-export or download "
            f"it again and upload it as {ACCEPTED}.")


def open_image(data: bytes, name: str | None = None) -> Image.Image:
    """Open ``data`` with PIL, restricted to the formats :func:`read_image` accepts, with only the header
    read, and refuse (:class:`~cxrcore.errors.ImageError`) a size over :data:`MAX_PIXELS` or under
    :data:`MIN_SIDE` before any pixel is decoded. The caller closes the image (``with open_image(...)``).

    PIL's own bomb check raises only above 2 x ``Image.MAX_IMAGE_PIXELS`` (a library global, left as it
    is); this check is the module's limit and does not depend on it. Compressed metadata read at open
    (PNG text / ICC chunks) is capped by PIL itself (1 MB a chunk, 64 MB in all)."""
    return _open_pil(data, _label(name))


def _open_pil(data: bytes, label: str) -> Image.Image:
    Image.init()  # Image.open(formats=...) raises KeyError for names not registered
    try:
        im = Image.open(BytesIO(data), formats=[f for f in _PIL_FORMATS if f in Image.OPEN])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the warning: when warnings are errors
        raise _error(f"{label} declares more than {MAX_PIXELS // 1_000_000} megapixels and was refused "
                     f"as a possible decompression bomb; downscale it and upload again.") from None
    except Exception:
        raise _error(_corrupt(label)) from None
    try:
        _check_size(*im.size, label)  # header size, before decoding
        if im.format == "TIFF":
            _check_tiff_tiles(im, label)
    except ImageError:
        im.close()
        raise
    return im


def _check_tiff_tiles(im: Image.Image, label: str) -> None:
    """libtiff decodes a whole tile into a buffer of the tile's declared size, however small the image: a
    64 x 64 image with one 16384 x 16384 deflate tile of zeros is 255 KB and takes 260 MB. A tile may
    exceed the image only up to the 16-pixel multiple the format requires (or 1 megapixel)."""
    try:
        tw, th = int(im.tag_v2.get(322) or 0), int(im.tag_v2.get(323) or 0)  # TileWidth, TileLength
    except Exception:
        raise _error(_corrupt(label)) from None
    w, h = im.size
    if tw * th > max((w + 15) // 16 * 16 * ((h + 15) // 16 * 16), 1 << 20):
        raise _error(f"{label} is a {w}×{h} TIFF whose tiles are declared {tw}×{th} pixels, far larger than the "
                     f"image; it was refused as a possible decompression bomb. Save it again without tiles or as "
                     f"PNG and upload that.")


def _read_pil(data: bytes, label: str) -> LoadedImage:
    corrupt = _corrupt(label)
    im = _open_pil(data, label)
    fmt = "JPEG" if im.format == "MPO" else str(im.format)
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
def dicom_header(data: bytes, name: str | None = None):
    """The DICOM header of an image file's bytes (a pydicom Dataset without its pixel data), or None when the
    bytes are not a DICOM file (a PNG, a JPEG). Read the same bounded way as :func:`read_image` reads it, for the
    results that reference the image (a DICOM Structured Report); its values stay in this process."""
    if data[128:132] != b"DICM" and not (name and name.lower().endswith((".dcm", ".dicom"))):
        return None
    try:
        ds = _parse_dicom(data, _label(name))
    except ImageError:
        raise
    except Exception:
        return None
    if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
        return None
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in ds:
            del ds[tag]
    return ds


def _read_dicom(data: bytes, label: str) -> LoadedImage:
    import pydicom
    from pydicom import pixels
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:  # messages never quote pydicom's exceptions: they may contain element values
        ds = _parse_dicom(data, label)
        looks_dicom = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData",
                                            "SOPClassUID", "Rows", "Modality"))
    except ImageError:
        raise
    except Exception:
        looks_dicom = False
    if not looks_dicom:
        raise _error(f"{label} could not be read as DICOM: it is truncated, corrupt or not a DICOM "
                     f"file; export it again as {ACCEPTED}.")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _error(f"{label} is a DICOM file with no image in it (for example a structured report "
                     f"or presentation state); upload an image DICOM such as a CR or DX radiograph.")
    rows, cols, frames = _check_declared(ds, label)
    try:
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    except Exception:
        raise _incomplete(label) from None
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
    if ts.is_transfer_syntax and ts.is_encapsulated and "PixelData" in ds:
        _check_encapsulated(ds, ts, ts_name, rows, cols, frames, label)  # the frame's own header, before decoding
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
        _check_segmented_lut(ds, ts, label)
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


# --------------------------------------------------------------------------- DICOM: bombs
def _incomplete(label: str) -> ImageError:
    return _error(f"{label} is an incomplete DICOM image (rows, columns or pixel description missing or "
                  f"invalid); export it again.")


def _too_big(label: str, what: str) -> ImageError:
    return _error(f"{label} {what}; it was refused as a possible decompression bomb. Export the image again "
                  f"(uncompressed, one frame) or as PNG and upload that.")


def _geometry(ds) -> tuple[int, int, int, int, int]:
    """Rows, Columns, frames, samples per pixel and bits allocated, as the header of ``ds`` declares them."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = max(1, int(ds.get("NumberOfFrames") or 1))
    samples = max(1, int(ds.get("SamplesPerPixel") or 1))
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        allocated = 32 if "FloatPixelData" in ds else 64
    else:
        allocated = max(1, int(ds.get("BitsAllocated") or 8))
    return rows, cols, frames, samples, allocated


def _declared_bytes(ds) -> int:
    """Bytes of native pixel data the header of ``ds`` declares (all frames, all samples)."""
    rows, cols, frames, samples, allocated = _geometry(ds)
    return (rows * cols * frames * samples * allocated + 7) // 8


def _check_declared(ds, label: str) -> tuple[int, int, int]:
    """Rows, Columns and frames of ``ds``; refuses sizes over the limits before any pixel is decoded."""
    try:
        rows, cols, frames, samples, allocated = _geometry(ds)
    except Exception:
        raise _incomplete(label) from None
    _check_size(cols, rows, label)
    if rows * cols * frames > MAX_PIXELS:
        raise _error(f"{label} declares {frames} frames of {cols}×{rows} pixels ({rows * cols * frames / 1e6:.0f} "
                     f"megapixels in all), above the {MAX_PIXELS // 1_000_000} megapixel limit; export the one "
                     f"image you need as a single-frame DICOM or PNG and upload that.")
    nbytes = _declared_bytes(ds)
    if nbytes > MAX_PIXEL_BYTES:
        raise _error(f"{label} declares {nbytes / 2**20:.0f} MB of pixel data ({frames} × {cols}×{rows} pixels, "
                     f"{samples} sample(s) of {allocated} bits), above the {MAX_PIXEL_BYTES // 2**20} MB limit; "
                     f"export it as an 8- or 16-bit grayscale image and upload again.")
    return rows, cols, frames


class _InflateLimit(Exception):
    pass


class _CappedInflater:
    """A read-only, seekable file over raw-deflate data that inflates on demand and never holds more than
    ``limit`` inflated bytes (then it raises :class:`_InflateLimit` and sets ``exceeded``). pydicom reads
    the dataset from it as it would from its own ``zlib.decompress`` output."""

    _CHUNK = 1 << 16   # compressed bytes fed to zlib at a time
    _STEP = 1 << 22    # inflated bytes asked of zlib at a time

    def __init__(self, compressed: memoryview, limit: int):
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._src = compressed
        self._fed = 0
        self.buf = bytearray()
        self.pos = 0
        self.limit = limit
        self.exceeded = False

    def _fill(self, upto: int | None) -> None:
        """Inflate until ``upto`` bytes are held (None: all of it) or the stream ends."""
        while (upto is None or len(self.buf) < upto) and not self._z.eof:
            room = self.limit + 1 - len(self.buf)  # one byte over the limit proves it is exceeded
            if room <= 0:
                self.exceeded = True
                raise _InflateLimit
            tail = self._z.unconsumed_tail
            if tail:
                inp = tail
            elif self._fed < len(self._src):
                inp = self._src[self._fed:self._fed + self._CHUNK]
                self._fed += len(inp)
            else:
                inp = b""
            out = self._z.decompress(inp, min(room, self._STEP))
            if not out and not inp:
                break  # the compressed data ended before the deflate stream did (truncated)
            self.buf += out
        if len(self.buf) > self.limit:
            self.exceeded = True
            raise _InflateLimit

    def read(self, n: int = -1) -> bytes:
        self._fill(None if n is None or n < 0 else self.pos + n)
        end = len(self.buf) if n is None or n < 0 else min(len(self.buf), self.pos + n)
        with memoryview(self.buf) as view, view[self.pos:end] as part:
            out = bytes(part)
        self.pos = max(self.pos, end)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            self._fill(None)
            offset += len(self.buf)
        elif whence == 1:
            offset += self.pos
        self.pos = max(0, offset)
        return self.pos

    def tell(self) -> int:
        return self.pos


def _parse_dicom(data: bytes, label: str):
    """``pydicom.dcmread(data, force=True)``, except that a Deflated Explicit VR Little Endian dataset is
    inflated through :class:`_CappedInflater` (pydicom itself inflates all of it, unbounded, before anything
    can be checked): first up to :data:`HEADER_ALLOWANCE` to read the image description (group 0028), whose
    sizes are checked, then no more than the declared pixel data plus that allowance."""
    import pydicom
    from pydicom.dataset import FileDataset
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fp = BytesIO(data)
    # the same two calls, in the same order, as pydicom.filereader.read_partial (pydicom 3.0): so the
    # file is routed here exactly when dcmread would inflate it
    preamble = read_preamble(fp, True)
    meta = _read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(BytesIO(data), force=True)
    reader = _CappedInflater(memoryview(data)[fp.tell():], HEADER_ALLOWANCE)
    what = "is a deflated DICOM that inflates to more than {mb} MB before declaring its image size"
    try:
        head = read_dataset(reader, False, True, stop_when=lambda tag, vr, length: tag > 0x0028FFFF)
        if reader.exceeded:
            raise _InflateLimit
        if "Rows" in head and "Columns" in head:
            _check_declared(head, label)
            needed = _declared_bytes(head)
            reader.limit = min(MAX_PIXEL_BYTES + HEADER_ALLOWANCE, reader.tell() + needed + HEADER_ALLOWANCE)
            need = f"{needed / 2**20:.1f} MB" if needed >= 2**20 else f"{needed:,} bytes"
            what = (f"is a deflated DICOM that inflates to more than {{mb}} MB, far more than its declared "
                    f"{int(head.Columns)}×{int(head.Rows)} image needs ({need})")
        reader.seek(0)
        body = read_dataset(reader, False, True)
        if reader.exceeded:  # pydicom turns some read errors into warnings or other errors
            raise _InflateLimit
    except (ImageError, zlib.error):
        raise
    except Exception:
        if reader.exceeded:
            raise _too_big(label, what.format(mb=f"{reader.limit / 2**20:.0f}")) from None
        raise
    ds = FileDataset(BytesIO(), body, preamble, meta, False, True)
    ds.set_original_encoding(False, True, body._character_set)
    return ds


def _check_encapsulated(ds, ts, ts_name: str, rows: int, cols: int, frames: int, label: str) -> None:
    """Refuses a compressed first frame whose own header declares more than the DICOM header does (the
    decoders allocate what the codestream says), and RLE data that would expand past Rows x Columns."""
    from pydicom import uid
    from pydicom.encaps import get_frame

    try:
        offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        frame = get_frame(ds.PixelData, 0, extended_offsets=offsets, number_of_frames=frames)
    except Exception:
        raise _error(f"{label} has {ts_name} pixel data that is truncated or corrupt; export it again.") from None
    if ts in uid.RLETransferSyntaxes:
        if _rle_overflows(frame, rows * cols):
            raise _too_big(label, f"holds RLE data that expands beyond its declared {cols}×{rows} pixels")
        return
    if ts in uid.JPEGTransferSyntaxes or ts in uid.JPEGLSTransferSyntaxes:
        size = _jpeg_frame_size(frame)
    elif ts in uid.JPEG2000TransferSyntaxes:
        size = _j2k_frame_size(frame)
    else:
        raise _error(f"{label} uses {ts_name} compression, which this reader does not decode; export it "
                     f"uncompressed or as PNG.")
    if size is None:
        raise _error(f"{label} has {ts_name} pixel data whose image header could not be read (truncated or "
                     f"corrupt); export it again.")
    width, height, components = size
    if width * height > rows * cols or components > 4:
        raise _too_big(label, f"holds a compressed image of {width}×{height} pixels ({components} components) "
                              f"inside a DICOM header that declares {cols}×{rows}")


_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}  # JPEG start-of-frame markers; F7: JPEG-LS


def _jpeg_frame_size(b: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG / JPEG-LS frame header; None if it has none or says 0."""
    if b[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if marker in _SOF:
            if i + 10 > len(b):
                return None
            height, width = int.from_bytes(b[i + 5:i + 7], "big"), int.from_bytes(b[i + 7:i + 9], "big")
            return (width, height, b[i + 9]) if width and height else None
        i += 2 + int.from_bytes(b[i + 2:i + 4], "big")
    return None


def _j2k_frame_size(b: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG 2000 codestream's SIZ segment (bare or in a JP2 file)."""
    start = 0
    if b[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":  # JP2 file: find the contiguous codestream box
        start = None
        i = 0
        while i + 8 <= len(b):
            length, kind = int.from_bytes(b[i:i + 4], "big"), b[i + 4:i + 8]
            head = 8
            if length == 1:
                length, head = int.from_bytes(b[i + 8:i + 16], "big"), 16
            if kind == b"jp2c":
                start = i + head
                break
            if length == 0 or length < head:
                return None
            i += length
        if start is None:
            return None
    siz = b[start:start + 42]
    if len(siz) < 42 or siz[:4] != b"\xff\x4f\xff\x51":
        return None
    x, y, x0, y0 = (int.from_bytes(siz[k:k + 4], "big") for k in (8, 12, 16, 20))
    width, height = x - x0, y - y0
    return (width, height, int.from_bytes(siz[40:42], "big")) if width > 0 and height > 0 else None


def _rle_overflows(frame: bytes, expected: int) -> bool:
    """Whether any segment of an RLE frame would decode to more than ``expected`` bytes (one segment
    holds one byte plane of Rows x Columns), or take more steps than that to decode. Walks the run
    headers as pydicom's decoder does, without producing the output, and stops as soon as it is over."""
    if len(frame) < 64:
        return False  # pydicom refuses a header this short
    count = int.from_bytes(frame[:4], "little")
    starts = [int.from_bytes(frame[4 + 4 * k:8 + 4 * k], "little") for k in range(min(count, 15))]
    ends = starts[1:] + [len(frame)]
    cap = expected + 1024  # an encoder's padding at most
    for start, end in zip(starts, ends):
        src = frame[start:end]
        n, pos, out, steps = len(src), 0, 0, 0
        while pos < n:
            h = src[pos]
            if h > 128:        # replicate the next byte 257 - h times
                out += 257 - h
                pos += 2
            elif h < 128:      # copy the next h + 1 bytes
                out += min(h + 1, n - pos - 1)
                pos += h + 2
            else:              # 128: no operation
                pos += 1
            steps += 1
            if out > cap or steps > cap:
                return True
    return False


_LUT_ENTRIES = 65536  # the most a palette colour lookup table can have (its descriptor's first value is 16 bits)


def _check_segmented_lut(ds, ts, label: str) -> None:
    """Refuses a segmented palette colour lookup table that would expand past :data:`_LUT_ENTRIES` entries,
    or that is longer than such a table can need, before pydicom expands it (a linear segment of three
    words expands to up to 65 535 entries, indirect segments copy other segments, recursively)."""
    import sys
    from array import array

    from pydicom.uid import ExplicitVRBigEndian

    try:
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])  # pydicom reads all four with the red one's depth
    except Exception:
        depth = 16
    swap = (sys.byteorder == "little") != (ts != ExplicitVRBigEndian)
    for colour in ("Red", "Green", "Blue", "Alpha"):
        raw = ds.get(f"Segmented{colour}PaletteColorLookupTableData")
        if not raw:
            continue
        words = array("B" if depth == 8 else "H")
        words.frombytes(bytes(raw[: len(raw) // words.itemsize * words.itemsize]))
        if swap and words.itemsize > 1:
            words.byteswap()
        if len(words) > 3 * _LUT_ENTRIES + 64:  # a discrete segment of one entry per entry, at most
            raise _too_big(label, f"has a segmented palette colour lookup table of {len(words):,} words, longer "
                                  f"than any table of {_LUT_ENTRIES:,} entries needs")
        total, i = 0, 0
        while i + 1 < len(words):
            opcode, length = words[i], words[i + 1]
            if opcode == 0:
                i += 2 + length
            elif opcode == 1:
                i += 3
            else:  # 2 (indirect: copies earlier segments, which may copy others) or invalid
                raise _error(f"{label} has a palette colour lookup table with indirect segments, which this reader "
                             f"does not expand; export the image as grayscale or RGB and upload again.")
            total += length
            if total > _LUT_ENTRIES:
                raise _too_big(label, f"has a segmented palette colour lookup table that expands past the "
                                      f"{_LUT_ENTRIES:,} entries a lookup table can have")
