"""perf-tables' pieces: how recorded fields read, and how a markdown block is rewritten."""

from __future__ import annotations

import pytest

from mobilegen.errors import InvalidInput
from mobilegen.verify.tables import NOT_RECORDED, blocks, load_json, recorded, stamp, update


def test_recorded_fields_read_as_text_and_absent_ones_say_so():
    assert recorded(None) == recorded([]) == recorded("") == NOT_RECORDED
    assert recorded(["avx2", "fma"]) == "avx2 fma"
    assert recorded({"a": 1, "b": 2}) == "a=1, b=2"
    assert (
        stamp({"commit": "abc", "machine": {"cpu": "EPYC"}})
        == f"commit: abc; machine: EPYC, cores {NOT_RECORDED}, CPU flags: {NOT_RECORDED}"
    )


def test_update_rewrites_only_the_blocks_and_reports_what_changed(tmp_path):
    doc = tmp_path / "perf.md"
    doc.write_text("intro\n<!-- perf_tables: --only memory -->\nold\n<!-- /perf_tables -->\nkept\n")
    assert blocks(doc.read_text()) == [("--only memory", "old\n")]
    assert update([doc], lambda args: f"tables for {args}") == [doc]
    assert (
        doc.read_text()
        == "intro\n<!-- perf_tables: --only memory -->\n\ntables for --only memory\n<!-- /perf_tables -->\nkept\n"
    )
    assert update([doc], lambda args: f"tables for {args}") == [], "a second run changes nothing"


def test_a_file_without_a_block_or_json_is_refused_by_name(tmp_path):
    plain = tmp_path / "plain.md"
    plain.write_text("no block here\n")
    with pytest.raises(InvalidInput, match="plain.md: no <!-- perf_tables"):
        update([plain], str)
    with pytest.raises(InvalidInput, match="plain.md: not JSON"):
        load_json(plain)
