"""What every ``tools/make_notebook_NN.py`` shares: collect markdown and code cells, write them without outputs.

The notebooks are generated so that their text can be reviewed and diffed as plain Python, and so that a
teacher can change a cell and rebuild. Cell ids are numbered, not random, so rebuilding an unchanged script
rewrites the very same file. A code cell that starts with ``# Parameters`` gets papermill's ``parameters``
tag, so ``papermill -p FULL True`` (or a teacher's tooling) can set them from outside.

Answer keys: a code cell holding ``### BEGIN SOLUTION`` / ``### END SOLUTION`` lines is a solution cell;
it gets nbgrader's cell metadata (``solution``, ``grade``, ``grade_id``, ...), so nbgrader's
``generate_assignment`` can use the notebooks as they are, and ``python -m minimaskrcnn classroom release``
turns it into a ``# YOUR CODE HERE`` stub. ``code(text, points=N)`` marks an autograded test cell.
"""
import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
if str(ROOT) not in sys.path:
    # The scripts write figures (iterations, layer widths, ...) into the prose from this checkout's
    # minimaskrcnn.config, so that the text cannot drift from the code.
    sys.path.insert(0, str(ROOT))


class NotebookBuilder:
    """Cells in the order they are added; ``write()`` saves them as ``notebooks/<filename>``."""

    def __init__(self, filename):
        self.path = NOTEBOOKS / filename
        self.cells = []

    def _add(self, cell):
        cell["id"] = f"cell-{len(self.cells):03d}"
        self.cells.append(cell)

    def md(self, text):
        self._add(new_markdown_cell(text.strip()))

    def code(self, text, points=None):
        cell = new_code_cell(text.strip())
        if cell.source.startswith("# Parameters"):
            cell.metadata["tags"] = ["parameters"]
        solution = bool(re.search(r"^\s*### BEGIN SOLUTION\s*$", cell.source, flags=re.M))
        if solution or points is not None:
            cell.metadata["nbgrader"] = {"grade": points is not None, "grade_id": f"cell-{len(self.cells):03d}",
                                         "locked": not solution, "schema_version": 3, "solution": solution,
                                         **({"points": points} if points is not None else {})}
        self._add(cell)

    def write(self):
        metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                    "language_info": {"name": "python"}}
        self.path.parent.mkdir(exist_ok=True)
        nbformat.write(new_notebook(cells=self.cells, metadata=metadata), self.path)
        print(f"wrote {self.path}")
