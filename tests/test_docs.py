"""docs/configs.md is generated from configs/base.py and must match it."""

from bdbounds import config_docs


def test_configs_md_is_up_to_date():
  with open(config_docs.docs_path(), encoding="utf-8") as f:
    committed = f.read()
  assert committed == config_docs.render_config_table(), (
      "docs/configs.md is out of date with configs/base.py: run `python -m bdbounds.config_docs`")


def test_every_key_has_a_comment():
  entries = config_docs.config_entries()
  assert len(entries) > 50  # the walk reached every section
  missing = [e.key for e in entries if not e.comment]
  assert not missing, f"keys without a trailing `# comment` in configs/base.py: {missing}"


def test_comments_are_paired_with_their_own_line():
  entries = {e.key: e for e in config_docs.config_entries()}
  assert entries["training.batch_size"].default == 200
  assert entries["training.batch_size"].comment == "global batch, split across all devices"
  assert entries["data.data_dir"].comment.startswith("TFDS data directory")  # a FieldReference
  assert entries["seed"].comment.startswith("base PRNG seed")
