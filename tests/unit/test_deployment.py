"""The role's mlflow_deployment fact, as the CLI reads it."""

from __future__ import annotations

from mlops_provision.deployment import Deployment


def test_missing_keys_give_safe_defaults() -> None:
    dep = Deployment.from_fact({})
    assert (dep.version, dep.port, dep.scheme, dep.firewall) == ("", 5000, "http", "unmanaged")
    assert (dep.restarted, dep.restart_reasons, dep.plan, dep.serve_artifacts) == (False, [], None, False)


def test_ansible_string_forms_are_read_as_values() -> None:
    dep = Deployment.from_fact({"restarted": "True", "serve_artifacts": "False", "port": "443",
                                "restart_reasons": "['unit changed', 'new venv']", "allow_from": "[]",
                                "plan": "[]", "mlflow_version_running": " 3.14.0 "})
    assert (dep.restarted, dep.serve_artifacts, dep.port) == (True, False, 443)
    assert dep.restart_reasons == ["unit changed", "new venv"]
    assert (dep.allow_from, dep.plan, dep.mlflow_version_running) == ([], [], "3.14.0")


def test_native_values_pass_through() -> None:
    dep = Deployment.from_fact({"restarted": False, "serve_artifacts": True, "port": 5000,
                                "allow_from": ["10.0.0.0/8"], "plan": ["would migrate the schema"],
                                "restart_reasons": None, "version": None})
    assert (dep.restarted, dep.serve_artifacts, dep.allow_from) == (False, True, ["10.0.0.0/8"])
    assert (dep.plan, dep.restart_reasons, dep.version) == (["would migrate the schema"], [], "")


def test_a_bad_port_falls_back_to_the_default() -> None:
    assert Deployment.from_fact({"port": "{{ mlflow_port }}"}).port == 5000


def test_a_migration_is_read_from_native_and_rendered_forms() -> None:
    native = Deployment.from_fact({"migration": {"tracking": ["a1", "b2"], "auth": ["c3", "d4"]}})
    assert native.migration == {"tracking": ("a1", "b2"), "auth": ("c3", "d4")}
    rendered = Deployment.from_fact({"migration": "{'tracking': ['a1', 'b2']}"})
    assert rendered.migration == {"tracking": ("a1", "b2")}
    assert Deployment.from_fact({"migration": "garbage"}).migration == {}
