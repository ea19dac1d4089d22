"""`tree`: a shallow MCTS-like search over solution steps, guided by a process reward model.

Each iteration selects one leaf per question (descending by mean backed-up value plus `exploration` *
sqrt(ln N(parent) / N(child))), expands it by k sampled next steps (at depth `max_steps` - 1 the rest of the
solution), and backs each child's PRM score (its steps so far; a finished child's is the whole solution's) up
the path. Finished children are not expanded further. It stops after `iterations`, when every branch is
finished, or when the budget cannot pay for an expansion; if nothing finished, the best partial solution is
written to the end while the budget allows. The answer is the finished solution the PRM scores highest.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from jaxmath.solve.context import Toolkit, needs_scorer, rank_key
from jaxmath.solve.result import SolveResult
from jaxmath.solve.search import Partial, answer_result, score_children
from jaxmath.solve.steps import Expansion, expand


@dataclasses.dataclass(eq=False)
class Node:
    """A partial solution in the tree with its visit count and backed-up value."""

    partial: Partial
    depth: int
    parent: "Node | None" = None
    children: list["Node"] = dataclasses.field(default_factory=list)
    visits: int = 0
    value: float = 0.0  # the sum of values backed up through this node

    @property
    def expanded(self) -> bool:
        return bool(self.children)

    def open(self) -> bool:
        """Whether anything under this node can still be expanded."""
        return not self.partial.finished and (not self.expanded or any(c.open() for c in self.children))

    def nodes(self) -> list["Node"]:
        return [self] + [n for c in self.children for n in c.nodes()]


def select(root: Node, exploration: float) -> Node | None:
    """The leaf to expand next (UCT over open children), or None when the whole tree is finished."""
    if not root.open():
        return None
    node = root
    while node.expanded:
        children = [c for c in node.children if c.open()]
        node = max(children, key=lambda c: c.value / c.visits
                   + exploration * math.sqrt(math.log(max(node.visits, 1)) / c.visits))
    return node


def backup(node: Node, value: float) -> None:
    """Add one visit with `value` to `node` and each of its ancestors."""
    while node is not None:
        node.visits += 1
        node.value += value
        node = node.parent


def tree(kit: Toolkit, questions: Sequence[str]) -> list[SolveResult]:
    """Shallow tree search: see the module docstring."""
    needs_scorer(kit)
    s = kit.settings
    prompts, budgets = [kit.prompt(q) for q in questions], kit.budgets(len(questions))
    roots = [Node(Partial("", None, False), 0) for _ in questions]
    active = set(range(len(questions)))
    for _ in range(s.iterations):
        leaves = {q: select(roots[q], s.exploration) for q in sorted(active)}
        active = {q for q, leaf in leaves.items() if leaf is not None}
        jobs = [Expansion(q, leaves[q].partial.text, to_end=leaves[q].depth >= s.max_steps - 1) for q in sorted(active)]
        if not jobs:
            break
        children, starved = expand(kit, prompts, budgets, jobs, s.samples)
        active -= starved
        owners = [jobs[c.source].question for c in children]
        for child, partial in zip(children, score_children(kit, questions, owners, children)):
            leaf = leaves[jobs[child.source].question]
            if any(c.partial.text == partial.text for c in leaf.children):
                continue  # a repeated sample adds no branch
            node = Node(partial, leaf.depth + 1, leaf)
            leaf.children.append(node)
            backup(node, rank_key(partial.score))
    nodes = [root.nodes()[1:] for root in roots]
    rollouts = [Expansion(q, max(ns, key=lambda n: rank_key(n.partial.score)).partial.text, to_end=True)
                for q, ns in enumerate(nodes) if ns and not any(n.partial.finished for n in ns)]
    children, _ = expand(kit, prompts, budgets, rollouts, 1)  # nothing finished: write the best one to the end
    owners = [rollouts[c.source].question for c in children]
    written = dict(zip(owners, score_children(kit, questions, owners, children)))
    return [answer_result(kit, question, budget, [n.partial for n in ns if n.partial.finished] or
                          ([written[q]] if q in written else []), [n.partial for n in ns],
                          f"tree search ({s.iterations} iterations, k={s.samples})")
            for q, (question, budget, ns) in enumerate(zip(questions, budgets, nodes))]
