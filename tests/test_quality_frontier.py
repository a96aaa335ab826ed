"""quality.py --frontier: the best setting per pass count from --jsonl grids, and its PNG."""
import json

import pytest

import quality


def row(setting, nfe, words, entropy=4.8, distinct=0.9, outside=()):
    mean = {"ar_nll": 1.4, "words": words, "distinct": distinct, "entropy": entropy, "runs": 0.0}
    return {"setting": setting, "nfe": nfe, "mean": mean, "se": {k: 0.0 for k in mean},
            "outside_band": list(outside)}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_frontier_picks_most_words_among_diverse_and_in_band_first(tmp_path):
    path = write(tmp_path / "grid.jsonl", [
        row("real validation text", 0, 0.92),
        row("steps=8,a", 8, 0.95, entropy=4.3, outside=["entropy"]),    # most words, but repeats
        row("steps=8,b", 8, 0.86, outside=["words"]),
        row("steps=8,c", 8, 0.84, outside=["words"]),
        row("steps=32,d", 32, 0.93, outside=["AR NLL"]),                # too safe
        row("steps=32,e", 32, 0.912),                                   # in band: wins
        row("steps=16,f", 16, 0.80, distinct=0.5, outside=["words", "distinct"]),
    ])
    frontier, real = quality.frontier_rows([path])
    assert real["mean"]["words"] == 0.92
    assert frontier[8][0]["setting"] == "steps=8,b"
    assert frontier[32][0]["setting"] == "steps=32,e"
    assert frontier[16][0] is None and len(frontier[16][1]) == 1


def test_frontier_writes_table_and_png(tmp_path, capsys):
    path = write(tmp_path / "grid.jsonl", [row("real validation text", 0, 0.92), row("steps=8", 8, 0.86),
                                          row("steps=16", 16, 0.88)])
    out = tmp_path / "frontier.png"
    quality.main(["--frontier", path, "--out", str(out)])
    table = capsys.readouterr().out
    assert "| 8 | steps=8 | 86.0" in table and "| 16 | steps=16 | 88.0" in table
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp.png"))


@pytest.mark.parametrize("content, message", [("not json\n", "--frontier"), ('{"a": 1}\n', "not a quality.py"),
                                              ("", "no real-text row")])
def test_frontier_bad_input_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(SystemExit) as e:
        quality.main(["--frontier", str(path), "--out", str(tmp_path / "f.png")])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "f.png").exists()


def test_frontier_refuses_out_not_png(tmp_path):
    path = write(tmp_path / "grid.jsonl", [row("real validation text", 0, 0.92), row("steps=8", 8, 0.86)])
    with pytest.raises(SystemExit, match="--out must be a .png"):
        quality.main(["--frontier", path, "--out", str(tmp_path / "f.jpg")])
