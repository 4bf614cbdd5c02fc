"""A storage URI that cannot be reached fails in bounded time, in one line naming it (issue 34, case 17):
`ts.load("gs://no-such-bucket/export")` offline had not returned after 590 s, since pyarrow's GCS client retries
for about 15 minutes unless told otherwise."""
from __future__ import annotations

from datetime import timedelta

import pyarrow.fs
import pytest

from tune_siamese.core import storage
from tune_siamese.core.errors import InputError


def retry_limit(fs: pyarrow.fs.FileSystem) -> timedelta | None:
    """The GCS filesystem's retry time limit, as it pickles its options."""
    return fs.__reduce__()[1][0]["retry_time_limit"]


def test_a_gcs_filesystem_gives_up_retrying_after_a_bound():
    fs, where = storage.filesystem("gs://no-such-bucket/export")
    assert isinstance(fs, pyarrow.fs.GcsFileSystem) and where == "no-such-bucket/export"
    assert retry_limit(fs) == timedelta(seconds=storage.GCS_RETRY_SECONDS)
    given, _ = storage.filesystem("gs://bucket/x?retry_limit_seconds=3&scheme=http")
    assert retry_limit(given) == timedelta(seconds=3)  # the URI's own limit wins
    assert storage.bounded_uri("s3://bucket/x?scheme=http") == "s3://bucket/x?scheme=http"
    assert storage.bounded_uri("gcs://bucket/x") == f"gcs://bucket/x?retry_limit_seconds={storage.GCS_RETRY_SECONDS}"


class Unreachable:
    """A remote filesystem whose every request fails, as pyarrow's does offline once its retries are spent."""

    def get_file_info(self, where):
        raise OSError("google::cloud::Status(UNAVAILABLE: Retry policy exhausted)\nmore detail")


def test_an_unreachable_uri_is_one_line_naming_it(monkeypatch):
    import tune_siamese as ts

    real = storage.filesystem
    monkeypatch.setattr(storage, "filesystem", lambda path: (Unreachable(), "b/x") if storage.is_uri(path)
                        else real(path))
    with pytest.raises(InputError) as raised:
        storage.read_text("gs://no-such-bucket/export/final.json")
    assert str(raised.value) == ("gs://no-such-bucket/export/final.json: cannot read this storage URI "
                                 "(google::cloud::Status(UNAVAILABLE: Retry policy exhausted))")
    with pytest.raises(InputError, match=r"^gs://no-such-bucket/export/SHA256SUMS: cannot read this storage URI"):
        ts.load("gs://no-such-bucket/export")
