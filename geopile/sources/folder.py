"""Your own corpus: an ImageFolder layout (``<class>/<image>``), as a directory or a zip/tar."""

from __future__ import annotations

from pathlib import Path

from geopile.download import extract_archive, verify_file
from geopile.params import ParamsError
from geopile.sources.base import ImageFolderArchive


class FolderSource(ImageFolderArchive):
    """A user's folder: ``sources.<name>: {type: folder, path: DIR_OR_ARCHIVE, licence: ...}``.

    Optional params: ``image_root`` (sub-folder holding the class folders), ``gsd_m`` (a number
    or ``[min, max]``), ``classes`` (the class order; default: sorted folder names), ``md5``.
    """

    kind = "folder"

    @property
    def image_root(self) -> str:  # type: ignore[override]
        """Sub-folder of the extracted tree that holds the class folders."""
        return str(self.params.get("image_root", "."))

    @property
    def classes(self) -> tuple[str, ...]:  # type: ignore[override]
        """Class order from params, else the sorted class folder names."""
        if "classes" in self.params:
            return tuple(self.params["classes"])
        root = self.ctx.raw_dir / self.image_root
        return tuple(sorted(p.name for p in root.iterdir() if p.is_dir())) if root.is_dir() else ()

    def _input(self) -> Path:
        if not self.params.get("path"):
            raise ParamsError(
                f"source {self.ctx.name}: set sources.{self.ctx.name}.path to a folder or archive"
            )
        path = Path(self.params["path"]).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"source {self.ctx.name}: {path} does not exist")
        return path

    def fetch(self) -> None:
        """Link a directory in place, or verify and extract an archive."""
        path = self._input()
        raw = self.ctx.raw_dir
        if path.is_dir():
            if not raw.exists():
                raw.parent.mkdir(parents=True, exist_ok=True)
                raw.symlink_to(path.resolve(), target_is_directory=True)
            self._origin_sha256 = None
            return
        fetched = verify_file(path, str(path), self.params.get("md5"))
        self._origin_sha256 = fetched.sha256
        extract_archive(path, raw)
