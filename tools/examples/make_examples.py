"""Draws the example images shipped in examples/ (made by the project, free to redistribute).

Run: python3 tools/examples/make_examples.py   (needs Pillow)
"""
from pathlib import Path

from PIL import Image, ImageDraw

out = Path(__file__).resolve().parents[2] / "examples"
out.mkdir(exist_ok=True)

# A small shop receipt.
img = Image.new("RGB", (360, 480), (250, 250, 245))
d = ImageDraw.Draw(img)
lines = [
    "CORNER CAFE", "12 Harbour Street", "", "2x Espresso        5.00", "1x Croissant       3.20",
    "1x Orange juice    4.10", "", "Subtotal          12.30", "VAT 10%            1.23",
    "TOTAL             13.53", "", "Paid by card", "Thank you!",
]
y = 30
for line in lines:
    d.text((40, y), line, fill=(20, 20, 20))
    y += 30
img.save(out / "receipt.png", optimize=True)

# A bar chart.
img = Image.new("RGB", (480, 320), "white")
d = ImageDraw.Draw(img)
d.line((50, 280, 460, 280), fill="black", width=2)
d.line((50, 20, 50, 280), fill="black", width=2)
for i, (label, v, c) in enumerate([("Q1", 120, "#4472c4"), ("Q2", 180, "#ed7d31"), ("Q3", 90, "#a5a5a5"), ("Q4", 220, "#ffc000")]):
    x = 80 + i * 95
    d.rectangle((x, 280 - v, x + 60, 280), fill=c)
    d.text((x + 22, 288), label, fill="black")
    d.text((x + 18, 262 - v), str(v), fill="black")
d.text((180, 4), "Sales per quarter", fill="black")
img.save(out / "chart.png", optimize=True)
