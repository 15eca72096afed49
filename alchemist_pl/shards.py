"""Read webdataset tar shards (img2dataset's layout) into samples, refusing what a shard cannot mean.

Key rule (webdataset's, which img2dataset's writer follows): a member ``dir/name.ext1.ext2`` belongs
to the sample whose key is the member name up to the first dot of its file name (``dir/name``);
the rest (``ext1.ext2``, lower-cased) is the field. A sample's members are adjacent in the archive.
Directory members and webdataset's ``__name__`` metadata members are passed over, as webdataset does.

Every problem raises :class:`~alchemist_pl.errors.DataError` naming the shard, the sample key and the
member: a truncated archive (no end-of-archive blocks: tar writers always end with two zero
blocks), a member that is not a regular file, a member name without an extension, a member that
occurs twice in one sample, members of one key that are not adjacent, a key that occurs twice.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from .errors import DataError

END_OF_ARCHIVE = b"\0" * 1024  # two 512-byte zero blocks (POSIX.1-1988 ustar and later)
_KEY_RULE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


def split_name(name: str) -> tuple[str, str] | None:
    """``(key, field)`` of a member name under webdataset's key rule, field lower-cased; None without a dot."""
    m = _KEY_RULE.match(name)
    return None if m is None else (m.group(1), m.group(2).lower())


def members(shard: Path) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of the regular files of a tar shard, in archive order.

    Raises:
        DataError: not a tar archive, cut short (inside a member, inside a header or at a member
            boundary: no end-of-archive blocks), or a member that is neither a file nor a directory.
    """
    try:
        tf = tarfile.open(shard, mode="r|")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{shard}: not a readable tar archive (expected a webdataset shard; {e})") from e
    last = None
    with tf:
        try:
            for info in tf:
                tf.members = []  # stream mode: keep no TarInfo list
                if info.isdir():
                    continue
                if not info.isreg():
                    raise DataError(
                        f"{shard}: member {info.name} is not a regular file (expected image and caption files)"
                    )
                data = tf.extractfile(info).read()
                last = info.name
                yield info.name, data
        except (tarfile.TarError, EOFError, OSError) as e:
            where = f"after member {last}" if last else "at its first member"
            raise DataError(f"{shard}: truncated or corrupt tar archive {where} ({type(e).__name__}: {e})") from e
        end = tf.offset
    with open(shard, "rb") as f:
        f.seek(end)
        tail = f.read(len(END_OF_ARCHIVE))
    if tail != END_OF_ARCHIVE:
        where = f"after member {last}" if last else "before its first member"
        raise DataError(
            f"{shard}: truncated tar archive: it ends {where} without the two zero end-of-archive blocks "
            f"every tar writer adds (a copy or download cut short?)"
        )


def samples(shard: Path) -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    """``(key, {field: (member name, bytes)})`` per sample of one shard, in archive order.

    Raises:
        DataError: see :func:`members`; a member name without an extension; a field twice in
            one sample; a key whose members are not adjacent or that occurs twice in the shard.
    """
    started: dict[str, str] = {}  # key -> its first member
    key, fields = None, {}
    for name, data in members(shard):
        if _META.match(name):
            continue
        parts = split_name(name)
        if parts is None:
            raise DataError(
                f"{shard}: member {name} has no extension (expected <key>.<field>, e.g. {name}.jpg and {name}.txt)"
            )
        k, field = parts
        if k != key:
            if key is not None:
                yield key, fields
            if k in started:
                raise DataError(
                    f"{shard}: sample {k!r}: member {name} is separated from the sample's earlier member "
                    f"{started[k]} by other samples' members (each sample's files must be adjacent, and a key "
                    f"occurs once per shard)"
                )
            started[k], key, fields = name, k, {}
        if field in fields:
            raise DataError(f"{shard}: sample {k!r}: member {name} occurs twice in the sample")
        fields[field] = (name, data)
    if key is not None:
        yield key, fields
