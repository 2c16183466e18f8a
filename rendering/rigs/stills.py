"""The stills sheet: every unit of a rig at full strength, to check the rig by eye.

    python -m rendering.rigs.stills [--rig builtin] [--size 256] [--out docs/rig_stills.png]

One labelled cell per expression unit (at the top of its documented range), the jaw, each
head rotation at both ends of its range, the neutral face and two composites (smile, frown).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

COMPOSITES = {
    "smile (composite)": {"smile_left": 1.0, "smile_right": 1.0, "cheek_raise": 0.7},
    "frown (composite)": {"brow_lower": 1.0, "mouth_corner_depress": 1.0, "lip_press": 0.5},
}


def stills_poses(layout) -> list[tuple[str, np.ndarray]]:
    poses: list[tuple[str, np.ndarray]] = [("neutral", np.zeros(layout.width, np.float32))]
    for i, dim in enumerate(layout.dims):
        if dim.group == "head":
            for end in (dim.low, dim.high):
                v = np.zeros(layout.width, np.float32)
                v[i] = end
                poses.append((f"{dim.name} {end:+.1f}", v))
        elif layout.width <= 24 or i < 6:  # every unit of small layouts, a few of large ones
            v = np.zeros(layout.width, np.float32)
            v[i] = dim.high
            poses.append((f"{dim.name} {dim.high:g}", v))
    if layout.name == "builtin":
        for label, units in COMPOSITES.items():
            v = np.zeros(layout.width, np.float32)
            for name, value in units.items():
                v[layout.index(name)] = value
            poses.append((label, v))
    return poses


def stills_sheet(rig, *, size: int = 256, columns: int = 6):
    from PIL import Image, ImageDraw, ImageFont

    from rendering.encode import font_path
    from rendering.renderer import FaceRenderer, RenderSettings

    poses = stills_poses(rig.layout)
    with FaceRenderer(rig, RenderSettings(width=size, height=size)) as renderer:
        frames = renderer.render(np.stack([p for _, p in poses]))
    label_h = max(16, size // 10)
    rows = -(-len(poses) // columns)
    sheet = Image.new("RGB", (columns * size, rows * (size + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.truetype(font_path(), max(10, label_h * 6 // 10))
    for k, ((label, _), frame) in enumerate(zip(poses, frames)):
        x, y = (k % columns) * size, (k // columns) * (size + label_h)
        sheet.paste(Image.fromarray(frame), (x, y))
        draw.text((x + size / 2, y + size + label_h / 2), label, font=font, fill=(20, 20, 20),
                  anchor="mm")
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rig", default="builtin")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", default="docs/rig_stills.png")
    args = parser.parse_args()
    from rendering.renderer import select_gl_platform

    select_gl_platform()
    from rendering.rigs import get_rig

    sheet = stills_sheet(get_rig(args.rig), size=args.size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
