"""docs/configs.md is generated from configs/base.py and must match it."""

import os

import pytest

from bdbounds import config_docs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, config_docs.BASE_PATH)


def test_configs_md_is_up_to_date():
  with open(os.path.join(ROOT, config_docs.DOCS_PATH), encoding="utf-8") as f:
    committed = f.read()
  assert committed == config_docs.render_config_table(BASE), (
      "docs/configs.md is out of date with configs/base.py: run `python -m bdbounds.config_docs`")


def test_every_key_has_a_comment():
  entries = config_docs.config_entries(BASE)
  assert len(entries) > 50  # the walk reached every section
  missing = [e.key for e in entries if not e.comment]
  assert not missing, f"keys without a trailing `# comment` in configs/base.py: {missing}"


def test_comments_are_paired_with_their_own_line():
  entries = {e.key: e for e in config_docs.config_entries(BASE)}
  assert entries["training.batch_size"].default == 200
  assert entries["training.batch_size"].comment == "global batch, split across all devices"
  assert entries["data.data_dir"].comment.startswith("TFDS data directory")  # a FieldReference
  assert entries["seed"].comment.startswith("base PRNG seed")


def test_the_command_writes_the_table_of_the_file_it_is_given(tmp_path):
  base = tmp_path / "base.py"
  base.write_text("import ml_collections\n\n\ndef get_config():\n  c = ml_collections.ConfigDict()\n"
                  "  c.seed = 3  # the seed\n  c.data = ml_collections.ConfigDict()\n"
                  "  c.data.name = 'rings'  # the data set\n  return c\n")
  output = tmp_path / "configs.md"
  config_docs.main([f"--base={base}", f"--output={output}"])
  text = output.read_text()
  assert text == config_docs.render_config_table(str(base))
  assert "| `seed` | `3` | the seed |" in text and "| `data.name` | `\"rings\"` | the data set |" in text
  base.write_text(base.read_text().replace("  # the data set", ""))
  with pytest.raises(ValueError, match="data.name"):
    config_docs.render_config_table(str(base))
