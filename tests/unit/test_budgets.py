"""Rate limiters keyed by the tier DotDigital names in X-RateLimit-Scope, on a fake clock."""

from __future__ import annotations

from stream.clock import FakeClock
from stream.dotdigital.budgets import MAX_SCOPES, Budget, Budgets
from stream.dotdigital.ratelimit import RateLimiter

STARTING: dict[Budget, int] = {"add": 75, "remove": 35, "other": 600}


def tier(scope: str, limit: int, remaining: int) -> dict[str, str]:
    return {
        "X-RateLimit-Scope": scope,
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": "30",
    }


def burst(limiter: RateLimiter) -> int:
    taken = 0
    while limiter.try_acquire():
        taken += 1
        assert taken < 10_000
    return taken


def test_before_any_header_each_operation_is_paced_by_its_configured_budget() -> None:
    budgets = Budgets(STARTING, FakeClock())
    assert budgets.for_operation("import").limit == 75
    assert budgets.for_operation("removal").limit == 35
    for operation in ("contact_lookup", "contact_list", "import_status", "address_books"):
        assert budgets.for_operation(operation).limit == 600
        assert budgets.name_of(operation) == "other"


def test_operations_whose_responses_name_one_tier_share_one_budget() -> None:
    clock = FakeClock()
    budgets = Budgets(STARTING, clock)
    budgets.learn("import", tier("lowCallRate", 60, 59)).observe(tier("lowCallRate", 60, 59))
    budgets.learn("removal", tier("lowCallRate", 60, 58)).observe(tier("lowCallRate", 60, 58))
    shared = budgets.for_operation("import")
    assert budgets.for_operation("removal") is shared
    assert budgets.name_of("removal") == "lowCallRate"
    assert shared.limit == 60
    # Imports and removals together get what the tier has left, not 75 + 35.
    assert burst(shared) == 58


def test_operations_of_separate_tiers_keep_separate_budgets() -> None:
    budgets = Budgets(STARTING, FakeClock())
    budgets.learn("import", tier("mediumCallRate", 150, 150))
    budgets.learn("removal", tier("lowCallRate", 35, 35))
    assert budgets.for_operation("import") is not budgets.for_operation("removal")
    assert budgets.for_operation("import").limit == 75  # seeded; observe() corrects it
    # The starting budgets of imports and removals pace nothing any more.
    assert set(budgets.status()) == {"other", "mediumCallRate", "lowCallRate"}


def test_the_first_operation_of_a_tier_hands_it_its_limiter_and_what_it_sent() -> None:
    gone: list[str] = []
    budgets = Budgets(STARTING, FakeClock(), on_gone=gone.append)
    own = budgets.for_operation("import")
    for _ in range(5):
        assert own.try_acquire()
    headers = tier("mediumCallRate", 10, 10)
    assert budgets.learn("import", headers) is own
    own.observe(headers)
    assert gone == ["add"]
    # The five requests sent before the tier was known still count against it.
    assert own.status().available == 5
    # "other" still paces operations that named no tier: a tier named by one of them gets a
    # limiter of its own.
    polls = budgets.learn("import_status", tier("highCallRate", 600, 600))
    assert polls is not budgets.limiter("other")
    assert "other" not in gone


def test_a_response_without_a_scope_teaches_nothing() -> None:
    budgets = Budgets(STARTING, FakeClock())
    limiter = budgets.learn("contact_list", {"X-RateLimit-Limit": "10"})
    assert limiter is budgets.limiter("other")
    assert budgets.name_of("contact_list") == "other"


def test_junk_scopes_are_ignored_and_learnt_tiers_are_bounded() -> None:
    created: list[str] = []
    budgets = Budgets(STARTING, FakeClock(), on_new=lambda name, _: created.append(name))
    assert created == ["add", "remove", "other"]
    for junk in ("", "a b", "x" * 200, "other", "<script>"):
        assert budgets.learn("import", {"X-RateLimit-Scope": junk}) is budgets.limiter("add")
    for index in range(MAX_SCOPES + 5):
        budgets.learn("contact_list", {"X-RateLimit-Scope": f"tier{index}"})
    assert len(created) == 3 + MAX_SCOPES
    # Past the bound the operation stays on the last tier it learnt.
    assert budgets.name_of("contact_list") == f"tier{MAX_SCOPES - 1}"


def test_an_operation_moving_to_another_tier_follows_it() -> None:
    budgets = Budgets(STARTING, FakeClock())
    budgets.learn("contact_list", tier("highCallRate", 600, 600))
    budgets.learn("contact_list", tier("lowCallRate", 35, 35))
    assert budgets.name_of("contact_list") == "lowCallRate"
    assert budgets.for_operation("contact_list") is budgets.limiter("lowCallRate")
