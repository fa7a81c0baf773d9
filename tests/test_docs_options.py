"""The docs' option tables are generated from the dataclass fields that declare the options
(scripts/update_docs_options.py): a new or changed option must show up in the docs."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("update_docs_options", ROOT / "scripts" / "update_docs_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_option_table_in_the_docs_is_current():
    assert load_script().stale_tables() == [], "run: python scripts/update_docs_options.py"


def test_a_table_lists_every_field_with_its_help():
    from dataset_tools.cli import options_markdown
    from musicgen_trainer.train_config import TrainConfig
    table = options_markdown(TrainConfig)
    for flag in ("`--data`", "`--grad-accum`", "`--resume`", "`--no-progress`", "`--sample-prompt`"):
        assert flag in table
    assert "| `--lr` | 1e-05 | peak learning rate |" in table
