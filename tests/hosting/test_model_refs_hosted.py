"""On a shared server a visitor names only listed models or folders inside the roots (issue item 8):
cxrcore.hosting.check_model_ref, called by the pages' loader (ui.common.ensure_weights), the job layer for
a visitor's job (dispatch.submit, check_config) and the Training form. The CLI (the operator) is not held."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import NIH_SAMPLE, REPO, kill_jobs  # also puts the repository root on sys.path (`ui`, `cxrcore`)
from cxrcore import hosting
from cxrcore.errors import AccessError, CXRError
from cxrcore.models.clip_names import LISTED

OUTSIDE_DIR = "clip:local-dir:/tmp/x"
ANY_REPO = "clip:hf-hub:someone/repo"


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A workspace and one data root (holding the NIH sample and a CLIP folder)."""
    home, root = tmp_path / "home", tmp_path / "root"
    (root / "clip-model").mkdir(parents=True)
    (root / "nih").symlink_to(NIH_SAMPLE, target_is_directory=True)
    monkeypatch.setenv("CXR_HOME", str(home))
    monkeypatch.delenv("CXR_CLIP_MODELS", raising=False)
    return {"home": home, "root": root}


def hosted(root: Path, **env) -> hosting.Settings:
    return hosting.settings(address="0.0.0.0", environ={"CXR_DATA_ROOTS": str(root), **env})


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to fetch from the Hugging Face hub fails the test: a refusal must come first."""
    import huggingface_hub

    def fetch(*a, **k):
        raise AssertionError(f"a download was attempted: {a} {k}")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, fetch)


def refused(ref, s, arch=False) -> str:
    with pytest.raises(AccessError) as exc:
        hosting.check_model_ref(ref, s, arch=arch)
    return str(exc.value)


def test_hosted_visitor_cannot_name_a_folder_or_repository_outside(roots):
    s = hosted(roots["root"])
    for arch in (False, True):
        text = refused(OUTSIDE_DIR, s, arch)
        assert "clip:local-dir:" in text and "/tmp/x" in text and "outside the folders this server opens" in text
        text = refused(ANY_REPO, s, arch)
        assert "download that repository" in text and "CXR_CLIP_MODELS" in text and LISTED[0] in text
    assert "listed" in refused("clip:ViT-L-14/openai", s, arch=True).lower()  # an unlisted weight set: its download
    assert "outside" in refused("/etc", s)  # a checkpoint folder outside the workspace and the roots
    assert "outside" in refused(f"clip:local-dir:{roots['root']}/../elsewhere", s)  # `..` resolved first


def test_hosted_visitor_may_name_listed_models_and_folders_inside(roots, monkeypatch):
    s = hosted(roots["root"])
    for name in LISTED:
        hosting.check_model_ref(name, s)
        hosting.check_model_ref(name, s, arch=True)
        hosting.check_model_ref(name.upper().replace("CLIP:", "clip:"), s)  # spelling is not the model
    hosting.check_model_ref("clip:ViT-B-32", s, arch=True)  # a listed model's architecture alone
    for name in ("xrv:densenet121-res224-all", "xrv:all", "resnet50", "tv:densenet121"):
        hosting.check_model_ref(name, s, arch=name != "xrv:all")
    hosting.check_model_ref(f"clip:local-dir:{roots['root'] / 'clip-model'}", s)  # inside the roots
    hosting.check_model_ref(str(REPO / "checkpoints" / "baseline"), s)  # the shipped checkpoints
    hosting.check_model_ref(str(roots["home"] / "runs" / "20250101-000000-abcd" / "checkpoint"), s)  # a run
    hosting.check_model_ref(None, s)
    hosting.check_model_ref("", s)
    monkeypatch.setenv("CXR_CLIP_MODELS", f"{ANY_REPO},{OUTSIDE_DIR}")  # what the operator lists, visitors may name
    hosting.check_model_ref(ANY_REPO, s, arch=True)
    hosting.check_model_ref(OUTSIDE_DIR, s)


def test_own_machine_is_unrestricted(roots):
    s = hosting.settings(address="127.0.0.1", environ={})
    for ref in (OUTSIDE_DIR, ANY_REPO, "clip:ViT-L-14/openai", "/etc"):
        hosting.check_model_ref(ref, s)
    # with data roots set on one's own machine, folders are held to them (as typed data folders are), names not
    local_roots = hosting.settings(address="127.0.0.1", environ={"CXR_DATA_ROOTS": str(roots["root"])})
    assert "outside" in refused(OUTSIDE_DIR, local_roots)
    hosting.check_model_ref(ANY_REPO, local_roots, arch=True)


def test_pages_loader_refuses_before_reading_or_downloading(roots, monkeypatch, no_network):
    """Every page loads a model through ui.common.ensure_weights / load_predictor."""
    from ui.common import ensure_weights

    monkeypatch.setenv("CXR_HOSTED", "1")
    monkeypatch.setenv("CXR_DATA_ROOTS", str(roots["root"]))
    for ref in (OUTSIDE_DIR, ANY_REPO, "/etc"):
        with pytest.raises(AccessError):
            ensure_weights(ref)
    ensure_weights(str(REPO / "checkpoints" / "baseline"))  # a shipped checkpoint: nothing to fetch, allowed


def _config(arch: str) -> dict:
    return {"data": str(NIH_SAMPLE), "labels": "nih14", "arch": arch, "pretrained": "none", "epochs": 1,
            "image_size": 64, "max_images": 60}


def test_job_layer_refuses_a_visitors_model_and_lets_the_operator_through(roots, monkeypatch, no_network):
    from cxrcore.jobs import JobStore, check_config, dispatch

    s = hosted(NIH_SAMPLE.parent, CXR_JOB_LAUNCHERS="everyone")
    visitor = hosting.User(id="anonymous#t", name="anonymous")
    for arch in (OUTSIDE_DIR, ANY_REPO):
        with pytest.raises(AccessError, match="not available to visitors"):
            check_config(_config(arch), s, user=visitor)
        with pytest.raises(AccessError, match="not available to visitors"):
            dispatch.submit(_config(arch), name="x", user=visitor, settings=s)
        with pytest.raises(AccessError, match="not available to visitors"):
            dispatch.submit({**_config("resnet18"), "init": arch}, name="x", user=visitor, settings=s)
    assert JobStore().list() == []  # nothing created
    # the operator (the CLI: no user) is not held to the list: the loader itself answers (here: no such folder)
    for user in (None, hosting.operator_user()):
        try:
            check_config(_config(OUTSIDE_DIR), s, user=user)
        except AccessError as exc:
            pytest.fail(f"the operator was refused: {exc}")
        except CXRError:
            pass  # the model's own error (no open_clip config in /tmp/x): it was looked for, as the operator asked


def test_training_form_refuses_a_typed_clip_repository(tmp_path, monkeypatch, app_home, no_network):
    """A hosted visitor's form (here: a clone of someone's job with a typed architecture) is refused with the
    reason, and no job is created."""
    from streamlit.testing.v1 import AppTest

    from cxrcore.jobs import JobStore

    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(tmp_path / "no-shipped-checkpoints"))
    monkeypatch.setenv("CXR_HOSTED", "1")
    monkeypatch.setenv("CXR_JOB_LAUNCHERS", "everyone")
    monkeypatch.setenv("CXR_DATA_ROOTS", str(NIH_SAMPLE.parent))
    (tmp_path / "datasets").symlink_to(app_home / "datasets", target_is_directory=True)
    try:
        at = AppTest.from_file(str(REPO / "views" / "training.py"), default_timeout=120)
        at.session_state["train_clone"] = (_config(ANY_REPO), "local", "someone's job")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.selectbox(key="tf1_arch").value == ANY_REPO
        at.button(key="train_submit").click().run()
        assert not at.exception, [e.value for e in at.exception]
        errors = " ".join(e.value for e in at.error)
        assert "download that repository" in errors and "CXR_CLIP_MODELS" in errors, errors
        assert JobStore().list() == []
    finally:
        kill_jobs(tmp_path)
