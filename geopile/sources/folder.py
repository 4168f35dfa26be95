"""Your own corpus: an ImageFolder layout (``<class>/<image>``), as a directory or a zip/tar."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field

from geopile.download import verify_file
from geopile.params import ParamsError
from geopile.schema import Gsd, Md5, Omit, SourceSettings, Text
from geopile.sources.base import ImageFolderArchive
from geopile.staging import install_archive, point_raw_dir

log = logging.getLogger(__name__)


class FolderSettings(SourceSettings):
    """``sources.NAME: {type: folder, path: ...}``: your own ImageFolder directory or archive."""

    enabled: Omit[bool] = Field(None, description="false: ingest writes empty records")
    role: Omit[Literal["pretrain", "eval"]] = Field(
        None, description="pretrain: in the shards; eval: only for decontamination")
    path: Text = Field(description="a directory or zip/tar of <class>/<image>")
    md5: Md5 = Field(None, description="checks an archive when given")
    image_root: Omit[Text] = Field(None, description="sub-folder holding the class folders")
    classes: Omit[list[Text]] = Field(None, description="the class order")
    gsd_m: Omit[Gsd] = Field(None, description="GSD range")


class FolderSource(ImageFolderArchive):
    """A user's folder: ``sources.<name>: {type: folder, path: DIR_OR_ARCHIVE, licence: ...}``.

    Its facts come from params, since nobody published them: ``licence`` (without it the
    images are ingested with licence ``unknown`` and a warning, and the dataset card says so),
    ``citation`` (free text or BibTeX) and ``origin`` (or ``homepage``: where the images come
    from). Optional: ``image_root`` (sub-folder holding the class folders), ``gsd_m`` (a number
    or ``[min, max]``), ``classes`` (the class order; default: sorted folder names), ``md5``.
    """

    kind = "folder"
    settings = FolderSettings
    user_input = "path"

    @property
    def image_root(self) -> str:  # type: ignore[override]
        """Sub-folder of the extracted tree that holds the class folders."""
        return self.settings.image_root or "."

    @property
    def classes(self) -> tuple[str, ...]:  # type: ignore[override]
        """Class order from params, else the sorted class folder names."""
        if self.settings.classes is not None:
            return tuple(self.settings.classes)
        root = self.ctx.raw_dir / self.image_root
        return tuple(p.name for p in self.class_dirs(root)) if root.is_dir() else ()

    def key_parts(self, rel: Path) -> tuple[str, ...]:
        """The whole path under the image root names a file: ``<class>/001.jpg`` recurs."""
        return rel.with_suffix("").parts

    def _input(self) -> Path:
        if not self.settings.path:
            raise ParamsError(
                f"source {self.ctx.name}: set sources.{self.ctx.name}.path to a folder or archive"
            )
        path = Path(self.settings.path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"source {self.ctx.name}: {path} does not exist")
        return path

    def fetch(self) -> None:
        """Link a directory in place, or verify an archive and extract it keyed by its hash.

        Either way ``raw/<name>`` is re-pointed (atomically) at what params name now, so a
        changed path or a changed archive is never read through an earlier run's files.
        """
        path = self._input()
        if not self.settings.licence:
            log.warning(
                "source %s has no licence: its images are recorded with licence 'unknown' and "
                "the dataset card will say so; set sources.%s.licence (e.g. CC-BY-4.0, or "
                "'proprietary') before publishing a build that holds them",
                self.ctx.name, self.ctx.name)
        if path.is_dir():
            point_raw_dir(self.ctx, path.resolve())
            self._origin_sha256, self.input_id = None, str(path.resolve())
            return
        fetched = verify_file(path, str(path), self.settings.md5)
        self._origin_sha256 = self.input_id = fetched.sha256
        install_archive(self.ctx, path, fetched.sha256)
