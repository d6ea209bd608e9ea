"""[sink.postgres]: validated like every section; the DSN from the environment or a 0600 file,
never echoed in an error message."""
from __future__ import annotations

import pytest

from common.schema import ConfigError
from pipeline.config import DEFAULT_CONFIG, parse_config
from pipeline.pgsink import SinkConfigError, read_dsn

SECRET = "host=/tmp/x user=trader password=hunter2"


def test_sink_section_is_validated_and_defaults_off():
    cfg = parse_config(DEFAULT_CONFIG.read_text(), build=False)
    assert cfg.sink.postgres.enabled is False and cfg.sink.postgres.batch_records == 50_000
    with pytest.raises(ConfigError) as err:
        parse_config(DEFAULT_CONFIG.read_text() + "\n[sink.postgres]\nbatch_record = 5\n",
                     build=False)
    assert "batch_record" in str(err.value.problems)


def test_dsn_from_the_environment_first(monkeypatch, tmp_path):
    monkeypatch.setenv("HFT_T_DSN", SECRET)
    assert read_dsn("HFT_T_DSN", str(tmp_path / "nofile")) == SECRET


def test_dsn_file_must_be_0600_and_is_never_echoed(monkeypatch, tmp_path):
    monkeypatch.delenv("HFT_T_DSN", raising=False)
    f = tmp_path / "dsn"
    f.write_text(SECRET + "\n")
    f.chmod(0o644)
    with pytest.raises(SinkConfigError) as err:
        read_dsn("HFT_T_DSN", str(f))
    assert "chmod 600" in str(err.value) and "hunter2" not in str(err.value)
    f.chmod(0o600)
    assert read_dsn("HFT_T_DSN", str(f)) == SECRET
    with pytest.raises(SinkConfigError) as err:
        read_dsn("HFT_T_DSN", "")
    assert "HFT_T_DSN" in str(err.value)
