"""Mask overlays, text labels, contact sheets and MP4/GIF writers (numpy + Pillow).

One colour per track everywhere (training batches, predictions, videos), so the same object is
recognisable across frames. The video writers take frames one at a time, so a video of any
length is never held in memory (MP4 streams to ffmpeg; GIF keeps small palette frames).
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def track_colors(num: int, seed: int = 0) -> np.ndarray:
  """Distinct, saturated colours: golden-ratio hue steps. Returns uint8 ``[num, 3]``."""
  phase = (seed * 0.1234) % 1.0
  hues = (phase + 0.61803398875 * np.arange(num)) % 1.0
  rgb = [colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]
  return (np.asarray(rgb, np.float32).reshape(num, 3) * 255).round().astype(np.uint8)


def _edges(mask: np.ndarray) -> np.ndarray:
  """Boundary pixels of a bool mask ``[H, W]`` (4-neighbourhood)."""
  padded = np.pad(mask, 1, mode="edge")
  interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  return mask & ~interior


def overlay_masks(image: np.ndarray, masks: np.ndarray, colors: np.ndarray,
                  alpha: float = 0.5) -> np.ndarray:
  """Blends instance masks onto an image.

  Args:
    image: uint8 ``[H, W, 3]``.
    masks: bool ``[N, H, W]``.
    colors: uint8 ``[N, 3]``.
    alpha: fill opacity; boundaries are drawn opaque.

  Returns:
    uint8 ``[H, W, 3]``.
  """
  out = image.astype(np.float32)
  for mask, color in zip(masks, colors, strict=True):
    if not mask.any():
      continue
    out[mask] = (1 - alpha) * out[mask] + alpha * color.astype(np.float32)
    out[_edges(mask)] = color
  return out.round().clip(0, 255).astype(np.uint8)


def contact_sheet(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
  """Tiles images (uint8 ``[h, w, 3]``, any sizes) into a grid, row by row."""
  cell_h = max(t.shape[0] for row in rows for t in row)
  cell_w = max(t.shape[1] for row in rows for t in row)
  ncols = max(len(row) for row in rows)
  sheet = np.full((len(rows) * (cell_h + pad) + pad, ncols * (cell_w + pad) + pad, 3), 255,
                  np.uint8)
  for r, row in enumerate(rows):
    for c, tile in enumerate(row):
      y, x = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
      sheet[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
  return sheet


def save_png(path: str, image: np.ndarray) -> None:
  Image.fromarray(image).save(path)


def resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
  """Downscales ``image`` (uint8 ``[H, W, 3]``) so its longer side is at most ``max_side``."""
  h, w = image.shape[:2]
  scale = max_side / max(h, w)
  if scale >= 1:
    return image
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def pad_to_even(image: np.ndarray) -> np.ndarray:
  """Pads the bottom/right by one replicated row/column where H or W is odd.

  H.264 in yuv420p needs even sizes; padding (not cropping) keeps every original pixel.
  """
  h, w = image.shape[:2]
  if h % 2 == 0 and w % 2 == 0:
    return image
  return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: only the fixed-size bitmap font
    return ImageFont.load_default()


def draw_labels(image: np.ndarray, masks: np.ndarray, texts: Sequence[str], colors: np.ndarray,
                font_size: int | None = None) -> np.ndarray:
  """Writes one text per mask on a box of the mask's colour, just above its bounding box.

  The box goes inside the top of the bounding box when there is no room above, is shifted
  left to stay in the image, and moves down past boxes drawn before it. Empty masks get no
  text.

  Args:
    image: uint8 ``[H, W, 3]``.
    masks: bool ``[N, H, W]``.
    texts: ``N`` strings.
    colors: uint8 ``[N, 3]``.
    font_size: pixels; default scales with the image (at least 10).

  Returns:
    A new uint8 ``[H, W, 3]`` image.
  """
  if not len(masks) == len(texts) == len(colors):
    raise ValueError(f"masks ({len(masks)}), texts ({len(texts)}) and colors ({len(colors)}) "
                     "must have the same length")
  h, w = image.shape[:2]
  font = _font(font_size or max(10, round(min(h, w) / 30)))
  canvas = Image.fromarray(np.ascontiguousarray(image))
  draw = ImageDraw.Draw(canvas)
  pad = 1
  placed: list[tuple[int, int, int, int]] = []
  for mask, text, color in zip(masks, texts, colors, strict=True):
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows) or not text:
      continue
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
    x = int(min(cols[0], max(w - box_w, 0)))
    y = int(rows[0] - box_h if rows[0] >= box_h else rows[0])
    # Objects with nearby boxes would hide each other's labels: step down past earlier boxes.
    while y + 2 * box_h <= h and any(x < px + pw and px < x + box_w and y < py + ph
                                     and py < y + box_h for px, py, pw, ph in placed):
      y += box_h
    placed.append((x, y, box_w, box_h))
    fill = tuple(int(c) for c in color)
    # Rec. 601 luma picks the readable text colour on the box.
    luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    draw.rectangle((x, y, x + box_w - 1, y + box_h - 1), fill=fill)
    draw.text((x + pad - left, y + pad - top), text, font=font,
              fill=(0, 0, 0) if luma > 140 else (255, 255, 255))
  return np.asarray(canvas)


class Mp4Writer:
  """Streams RGB frames into an H.264 MP4 through imageio-ffmpeg's bundled ffmpeg.

  Every frame must have the first frame's size; odd sizes are padded to even (``pad_to_even``).
  Use as a context manager, or call ``close()``; nothing is written if no frame was appended.
  """

  def __init__(self, path: str, fps: float = 10.0, quality: float = 7.0):
    self.path = path
    self.fps = float(fps)
    self.quality = float(quality)
    self.frames_written = 0
    self._size: tuple[int, int] | None = None
    self._gen: Any = None

  def append(self, frame: np.ndarray) -> None:
    """Adds one uint8 ``[H, W, 3]`` frame."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
      raise ValueError(f"{self.path}: frames must be uint8 [H, W, 3], got {frame.dtype} "
                       f"{frame.shape}")
    if self._gen is None:
      import imageio_ffmpeg  # local: only video output needs it

      self._size = frame.shape[:2]
      even = pad_to_even(frame)
      self._gen = imageio_ffmpeg.write_frames(
          self.path, (even.shape[1], even.shape[0]), fps=self.fps, codec="libx264",
          quality=self.quality, pix_fmt_out="yuv420p",
          # 2, not the default 16: sizes are already even, and 16 would rescale the frames.
          macro_block_size=2, output_params=["-movflags", "+faststart"])
      self._gen.send(None)
    elif frame.shape[:2] != self._size:
      raise ValueError(f"{self.path}: frame {self.frames_written} is {frame.shape[:2]}, the "
                       f"video is {self._size}")
    self._gen.send(np.ascontiguousarray(pad_to_even(frame)).tobytes())
    self.frames_written += 1

  def close(self) -> None:
    if self._gen is not None:
      self._gen.close()
      self._gen = None

  def __enter__(self) -> Mp4Writer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


class GifWriter:
  """Collects downscaled, palette-quantised frames and writes a looping GIF on ``close()``.

  GIF cannot be appended to cheaply, so frames are held, but only as 8-bit palette images of
  at most ``max_side`` pixels; callers cap the count (e.g. by taking every k-th frame).
  """

  def __init__(self, path: str, fps: float = 10.0, max_side: int = 320):
    self.path = path
    self.fps = float(fps)
    self.max_side = max_side
    self._frames: list[Image.Image] = []

  @property
  def frames_written(self) -> int:
    return len(self._frames)

  def append(self, frame: np.ndarray) -> None:
    small = Image.fromarray(np.ascontiguousarray(resize_max_side(frame, self.max_side)))
    self._frames.append(small.quantize(colors=256, method=Image.Quantize.MEDIANCUT))

  def close(self) -> None:
    if not self._frames:
      return
    first, *rest = self._frames
    first.save(self.path, save_all=True, append_images=rest, loop=0,
               duration=max(20, round(1000 / self.fps)), disposal=1)
    self._frames = []

  def __enter__(self) -> GifWriter:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def write_mp4(frames: Iterable[np.ndarray], path: str, fps: float = 10.0,
              quality: float = 7.0) -> int:
  """Streams ``frames`` (uint8 ``[H, W, 3]``, all one size) to an H.264 MP4; returns the count."""
  with Mp4Writer(path, fps, quality) as writer:
    for frame in frames:
      writer.append(frame)
  return writer.frames_written


def write_gif(frames: Iterable[np.ndarray], path: str, fps: float = 10.0, max_side: int = 320,
              max_frames: int | None = None) -> int:
  """Writes a looping GIF of the first ``max_frames`` frames, downscaled; returns the count."""
  with GifWriter(path, fps, max_side) as writer:
    for frame in frames:
      if max_frames is not None and writer.frames_written >= max_frames:
        break
      writer.append(frame)
    count = writer.frames_written
  return count
