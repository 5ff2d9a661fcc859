"""Make the image's own files readable by the function's user: run once at image build, over what COPY put there.

Docker's COPY keeps each file's mode from the build machine, and Lambda runs the function as a non-root user. A
checkout (or a `cataract-train pull`) under a strict umask such as 027 leaves files 0640 and folders 0750 there, and
the function then cannot import its code or read its model. Python, not chmod: the 3.12 base image is Amazon Linux
2023-minimal, and the Dockerfile calls nothing but pip and python.
"""

from __future__ import annotations

import os
import stat
import sys


def make_readable(top: str) -> None:
    """Folders 0755 and files 0644 under ``top`` (nothing there is executable); symbolic links are left alone, since
    chmod would change what they point to, outside the tree or nowhere (an editor's dangling lock file)."""
    for root, _, files in os.walk(top):  # does not enter linked folders
        os.chmod(root, 0o755)
        for name in files:
            path = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.chmod(path, 0o644)


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        make_readable(folder)
