"""Write an interactive page that shows what cross-entropy and the Number Token Losses charge.

One self-contained HTML file (no server, no network; open it from disk): pick a target digit, drag
the predicted distribution or pick a preset (peaked right, at a neighbour, far away, bimodal 0/8),
and read CE, NTL-WAS, NTL-MSE, NTL-MAE and the soft-target W1 as they update.

Example:
  ntl explore --out ntl-explorer.html
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

from ntl.errors import UsageError


def page() -> str:
    """The explorer page as one HTML string, its scripts inlined."""
    files = resources.files(__name__)
    html = files.joinpath("page.html").read_text(encoding="utf-8")
    html = html.replace("/*LOSSES_JS*/", files.joinpath("losses.js").read_text(encoding="utf-8"))
    return html.replace("/*APP_JS*/", files.joinpath("app.js").read_text(encoding="utf-8"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="ntl-explorer.html",
                        help="where to write the page (an .html file)")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise UsageError(f"--out {args.out}: is a folder; give a file name such as {out / 'ntl.html'}")
    if not out.parent.exists():
        raise UsageError(f"--out {args.out}: the folder {out.parent} does not exist; create it first")
    out.write_text(page(), encoding="utf-8")
    print(f"wrote {out} — open it in a browser (no server needed)")
    return 0
