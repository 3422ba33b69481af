"""Orchestrator planning, shared by every adapter: which services a redeploy touches and
what a scale step changes, before any platform is asked."""

from __future__ import annotations

import pytest

from shared.messages import ServiceState, Target
from workers.orchestrators.base import image_repository, redeploy_plan, scale_change

pytestmark = pytest.mark.unit

SHOP = Target(cluster="demo", app="shop")
IMAGES = {
    "web": ["nginx:1.27"],
    "api": ["ghcr.io/acme/shop-api:1.4", "envoyproxy/envoy:v1.30"],
    "worker": ["ghcr.io/acme/shop-api:1.4"],
}


@pytest.mark.parametrize(
    "spelling",
    ["nginx", "nginx:1.27", "library/nginx", "docker.io/library/nginx:1.27", "nginx@sha256:ab"],
)
def test_every_spelling_of_a_repository_is_one_repository(spelling: str) -> None:
    """Docker Hub's short, library and fully qualified names, tags and digests agree."""
    assert image_repository(spelling) == image_repository("index.docker.io/library/nginx")


def test_repositories_of_different_registries_differ() -> None:
    """The same path on two registries is two repositories."""
    assert image_repository("ghcr.io/acme/app:1") != image_repository("quay.io/acme/app:1")
    assert image_repository("ghcr.io/acme/app:1") == image_repository("ghcr.io/acme/app@sha256:a")


def test_a_plain_redeploy_restarts_every_service_in_name_order() -> None:
    """Without an image, every service of the app is restarted, image unchanged."""
    assert redeploy_plan(IMAGES, SHOP, None) == (["api", "web", "worker"], False, None)


def test_a_redeploy_bound_to_a_service_restarts_only_it() -> None:
    """A service-bound trigger names the one service touched."""
    target = Target(cluster="demo", app="shop", service="web")
    assert redeploy_plan({"web": IMAGES["web"]}, target, None) == (["web"], False, None)


def test_an_image_rolls_out_only_where_its_repository_runs() -> None:
    """A push of shop-api rolls onto api and worker (sidecars count), never onto web."""
    chosen, roll, detail = redeploy_plan(IMAGES, SHOP, "ghcr.io/acme/shop-api:1.5")
    assert (chosen, roll, detail) == (["api", "worker"], True, None)


def test_an_image_no_service_runs_restarts_all_and_says_so() -> None:
    """A push nobody runs restarts every service, image unchanged, with the reason."""
    chosen, roll, detail = redeploy_plan(IMAGES, SHOP, "ghcr.io/acme/other:2")
    assert (chosen, roll) == (["api", "web", "worker"], False)
    assert detail == "no service of shop runs ghcr.io/acme/other; restarted all, image unchanged"


def test_a_bound_service_not_running_the_image_is_restarted_unchanged() -> None:
    """A service-bound redeploy with another repository's image restarts it and says why."""
    target = Target(cluster="demo", app="shop", service="web")
    chosen, roll, detail = redeploy_plan({"web": IMAGES["web"]}, target, "ghcr.io/acme/shop-api:2")
    assert (chosen, roll) == (["web"], False)
    assert detail is not None
    assert detail.startswith("web of shop does not run ghcr.io/acme/shop-api")


def _state(replicas: int, revision: int = 3) -> ServiceState:
    return ServiceState(replicas=replicas, image="nginx:1.27", revision=revision)


def test_a_scale_out_adds_the_step() -> None:
    """2 + 3 is 5: succeeded, not clamped, the whole step applied."""
    change = scale_change("web", _state(2), 3)
    assert change.status == "succeeded"
    assert change.after["web"].replicas == 5
    assert (change.clamped, change.applied_step, change.detail) == (False, 3, None)
    assert change.before == {"web": _state(2)}


def test_a_revision_step_moves_the_revision_with_the_replicas() -> None:
    """Adapters whose platform bumps a generation on a replica change say by how much."""
    assert scale_change("web", _state(2), 1, revision_step=1).after["web"].revision == 4
    assert scale_change("web", _state(2), 1).after["web"].revision == 3


def test_a_clamped_step_says_how_much_of_it_was_applied() -> None:
    """A step past the maximum stops there, and the detail names the bound."""
    change = scale_change("web", _state(3), 5, max_replicas=4)
    assert (change.status, change.after["web"].replicas, change.applied_step) == ("succeeded", 4, 1)
    assert change.clamped
    assert change.detail == "scale_out clamped at max_replicas 4: changed web by 1 of 5 replicas"


def test_a_scale_in_at_zero_is_skipped() -> None:
    """Nothing to remove: skipped, state unchanged, the reason given."""
    change = scale_change("web", _state(0), -1)
    assert change.status == "skipped"
    assert change.after == change.before
    assert change.applied_step == 0
    assert change.detail == "web already has 0 replicas (limit 0); nothing to scale_in"


def test_a_scale_in_stops_at_the_minimum() -> None:
    """5 - 10 with min 2 is 2, clamped."""
    change = scale_change("web", _state(5), -10, min_replicas=2)
    assert (change.after["web"].replicas, change.clamped, change.applied_step) == (2, True, 3)
    assert change.detail == "scale_in clamped at min_replicas 2: changed web by 3 of 10 replicas"


def test_a_bound_added_later_never_moves_a_service_against_the_step() -> None:
    """Above its new maximum, a scale_out leaves a service alone rather than shrinking it."""
    change = scale_change("web", _state(6), 1, max_replicas=4)
    assert change.status == "skipped"
    assert change.after["web"].replicas == 6
    below = scale_change("web", _state(1), -1, min_replicas=3)
    assert below.status == "skipped"
    assert below.after["web"].replicas == 1
