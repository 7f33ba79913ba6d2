"""A batched, differentiable environment made from any :class:`dynamics.Dynamics` and a cost or reward.

:class:`DiffEnv` steps ``B`` copies of a model at once and keeps the autograd graph from the actions to
the next states and rewards, which is what first-order policy learning (SHAC, :mod:`trajopt.rl.shac`)
differentiates. Episodes end by truncation (``episode_length`` steps) or by a termination test; an
ended copy is reset in the same call to a fresh, detached draw from the reset distribution, so no
gradient crosses a reset. The observation the episode ended on is returned as ``final_obs`` (with its
graph) for bootstrapping a value.

Differentiable with respect to: the actions, the current states (up to the last :meth:`DiffEnv.detach`
or reset) and every tensor of the dynamics, the cost or reward and the observation function that
requires grad.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from dynamics import Dynamics
from .._core.costs import Cost
from .._core.bounds import check_bounds, clamp
from .._core.checks import check_bool, check_callable, check_int
from .._core.problem import check_cost_dims, check_module_tensors
from ._checks import as_bound

__all__ = ["DiffEnv", "Step"]


class Step(NamedTuple):
    """What :meth:`DiffEnv.step` returns, for ``B`` copies with observations of size ``o``.

    Attributes:
        obs: ``(B, o)`` observations after the step (of the reset state where an episode ended).
        reward: ``(B,)`` rewards of the step taken.
        terminated: ``(B,)`` bool, the episode ended by the termination test (no value after it).
        truncated: ``(B,)`` bool, the episode ended by its length limit (a value may follow).
        final_obs: ``(B, o)`` the observation the step reached, before any reset (equal to ``obs`` where
            no episode ended); differentiable.
        final_state: ``(B, n)`` the state the step reached, before any reset; differentiable.
    """

    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor
    final_state: torch.Tensor

    @property
    def done(self) -> torch.Tensor:
        """``(B,)`` bool: the episode ended (terminated or truncated) and the copy was reset."""
        return self.terminated | self.truncated


class DiffEnv:
    """``num_envs`` copies of a dynamics model as a differentiable environment.

    Args:
        dynamics: a time-invariant discrete :class:`dynamics.Dynamics` (``x_next = dynamics(x, u)``).
        cost: a time-invariant :class:`trajopt.Cost`; the reward of a step is ``-cost.stage(x, u)``, and the
            step that reaches ``episode_length`` also gets ``-cost.terminal(x_next)``. Give exactly one of
            ``cost`` and ``reward``.
        reward: a callable ``reward(x (B, n), u (B, m), x_next (B, n)) -> (B,)`` in the states' dtype.
        reset: the reset distribution: a callable ``reset(count, generator) -> (count, n)`` states (a finite float
            tensor of the cost's and the model's dtype), or a tensor ``(K, n)`` of starts drawn from uniformly.
        episode_length: steps before truncation.
        num_envs: ``B``, the number of copies (over all processes when ``shard`` is given).
        u_lower, u_upper: control bounds broadcastable to ``(m,)``, each None, a number (a NumPy scalar too) or a
            tensor of the states' dtype (as every bound of :mod:`trajopt`; a list raises a TypeError naming it:
            pass ``torch.tensor(...)``); actions are clamped into them.
        observe: ``observe(x (B, n)) -> (B, o)``; the state itself when None.
        finite_horizon: the task ends at ``episode_length`` (as P2-P4's finite sums do): reaching it terminates
            the episode (no value follows) instead of truncating it.
        time_feature: append the fraction of the episode elapsed, ``t / episode_length``, to the
            observation (a finite-horizon task's optimal policy depends on it).
        terminate: ``terminate(x_next (B, n)) -> (B,)`` a bool tensor, or None for no early termination.
        shard: ``(rank, world)``: this process steps the ``rank``-th of ``world`` equal slices of the copies.
            Random draws are made for all ``num_envs`` copies and sliced, so the union over processes is the
            same environment as one process with every copy.

    The states are ``(B, n)`` in the dtype and on the device of the reset states.
    """

    def __init__(self, dynamics: Dynamics, cost: Cost | None = None, *, reward: Callable | None = None,
                 reset: Callable | torch.Tensor, episode_length: int, num_envs: int, u_lower=None,
                 u_upper=None, observe: Callable | None = None, terminate: Callable | None = None,
                 shard: tuple[int, int] | None = None, finite_horizon: bool = False,
                 time_feature: bool = False):
        where = "DiffEnv"
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"{where}: dynamics must be a dynamics.Dynamics (call .discretize() on a "
                            f"ContinuousDynamics), got {type(dynamics).__name__}")
        if dynamics.time_varying:
            raise ValueError(f"{where}: dynamics must be time-invariant (copies run at different times)")
        if (cost is None) == (reward is None):
            raise ValueError(f"{where}: give exactly one of cost and reward")
        if cost is not None:
            if not isinstance(cost, Cost):
                raise TypeError(f"{where}: cost must be a trajopt.Cost, got {type(cost).__name__}")
            if cost.time_varying:
                raise ValueError(f"{where}: cost must be time-invariant (copies run at different times)")
        elif not callable(reward):
            raise TypeError(f"{where}: reward must be callable, got {type(reward).__name__}")
        check_int(where, episode_length=episode_length, num_envs=num_envs)
        check_callable(where, allow_none=True, observe=observe, terminate=terminate)
        check_bool(where, time_feature=time_feature, finite_horizon=finite_horizon)
        if shard is None:
            rank, world = 0, 1
        else:
            if not (isinstance(shard, (tuple, list)) and len(shard) == 2):
                raise ValueError(f"{where}: shard must be a pair (rank, world) of ints, got {shard!r}")
            check_int(where, minimum=0, **{"shard[0] (rank)": shard[0]})
            check_int(where, **{"shard[1] (world)": shard[1]})
            rank, world = int(shard[0]), int(shard[1])
        if world < 1 or not 0 <= rank < world or int(num_envs) % world:
            raise ValueError(f"{where}: shard must be (rank, world) with 0 <= rank < world and world dividing "
                             f"num_envs = {num_envs}, got {shard}")
        if isinstance(reset, torch.Tensor):
            if reset.ndim != 2 or reset.shape[-1] != dynamics.state_dim or reset.shape[0] < 1:
                raise ValueError(f"{where}: reset as a tensor must have shape (K, n) with n = "
                                 f"{dynamics.state_dim}, got {tuple(reset.shape)}")
            if not bool(torch.isfinite(reset).all()):
                raise ValueError(f"{where}: reset contains NaN or Inf")
        elif not callable(reset):
            raise TypeError(f"{where}: reset must be a callable (count, generator) -> (count, n) or a (K, n) "
                            f"tensor, got {type(reset).__name__}")
        if cost is not None:
            like = reset if isinstance(reset, torch.Tensor) else next(
                (z for z in (*cost.parameters(), *cost.buffers()) if z.is_floating_point()), torch.empty(0))
            if isinstance(reset, torch.Tensor):
                check_module_tensors(where, {"cost": cost, "dynamics": dynamics}, reset, "reset")
            check_cost_dims(where, cost, dynamics.state_dim, dynamics.control_dim, int(episode_length), like)
        self.dynamics, self.cost, self.reward_fn = dynamics, cost, reward
        self._reset, self.episode_length, self.num_envs = reset, int(episode_length), int(num_envs)
        self.rank, self.world = rank, world
        self.local_envs = self.num_envs // world
        self.observe_fn, self.terminate_fn, self.time_feature = observe, terminate, bool(time_feature)
        self.finite_horizon = bool(finite_horizon)
        self._bounds = (as_bound(where, "u_lower", u_lower), as_bound(where, "u_upper", u_upper))
        self.lower = self.upper = None
        if isinstance(reset, torch.Tensor):             # the states' dtype is known: check the bounds now
            self._resolve_bounds(reset)
        self.state: torch.Tensor | None = None
        self.t: torch.Tensor | None = None

    @property
    def state_dim(self) -> int:
        return self.dynamics.state_dim

    @property
    def control_dim(self) -> int:
        return self.dynamics.control_dim

    def observe(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Observations ``(B, o)`` of states ``x (B, n)`` at steps ``t (B,)`` of their episodes (used only with
        ``time_feature``). The shape and dtype of ``x`` and ``t`` are checked (a TypeError or ValueError naming
        them)."""
        self._check_x("DiffEnv.observe", x)
        if self.time_feature and t is not None and not (isinstance(t, torch.Tensor) and t.shape == x.shape[:1]):
            raise ValueError(f"DiffEnv.observe: t must be a tensor of steps (B,) = ({x.shape[0]},), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        obs = x if self.observe_fn is None else self.observe_fn(x)
        if self.observe_fn is not None and not (isinstance(obs, torch.Tensor) and obs.ndim == 2
                                                and obs.shape[0] == x.shape[0] and obs.is_floating_point()):
            raise ValueError(f"DiffEnv: observe must return a float tensor (B, o) with B = {x.shape[0]}, got "
                             f"{tuple(obs.shape) if isinstance(obs, torch.Tensor) else type(obs).__name__}")
        if self.observe_fn is not None and bool(torch.isfinite(x).all()) and not bool(torch.isfinite(obs).all()):
            raise FloatingPointError("DiffEnv.observe: observe returned NaN or Inf for finite states")
        if not self.time_feature:
            return obs
        if t is None:
            raise ValueError("DiffEnv.observe: this env has time_feature=True; give the steps t (B,)")
        return torch.cat([obs, (t.to(obs.dtype) / self.episode_length).unsqueeze(-1)], -1)

    def _check_x(self, where, x):
        """``x`` a float tensor ``(B, n)`` (of the states' dtype once they are known): shapes and dtypes only."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{where}: x must be a torch.Tensor (B, n), got {type(x).__name__}")
        if x.ndim != 2 or x.shape[-1] != self.state_dim:
            raise ValueError(f"{where}: x has shape {tuple(x.shape)}; expected (B, n) = (B, {self.state_dim})")
        dtype = None if self.state is None else self.state.dtype
        if not x.is_floating_point() or (dtype is not None and x.dtype != dtype):
            raise TypeError(f"{where}: x must be a float tensor{'' if dtype is None else f' of the states dtype {dtype}'}"
                            f", got {x.dtype}")

    def _check_reward(self, reward, x, source):
        """What ``source`` (the reward function, or the cost's stage or terminal) returned for states ``x``: a
        tensor ``(B,)`` of their dtype (shapes and dtypes only: every step)."""
        if not isinstance(reward, torch.Tensor):
            raise TypeError(f"DiffEnv.step: {source} must return a tensor (B,) = ({x.shape[0]},), got "
                            f"{type(reward).__name__}")
        if reward.shape != x.shape[:1]:
            raise ValueError(f"DiffEnv.step: {source} must return a tensor of shape (B,) = ({x.shape[0]},), got "
                             f"{tuple(reward.shape)}")
        if reward.dtype != x.dtype:
            raise TypeError(f"DiffEnv.step: {source} returned {reward.dtype} for {x.dtype} states; it must compute "
                            f"in the states' dtype")

    def sample_starts(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """This process's slice ``(local_envs, n)`` of one draw of ``num_envs`` starts, detached."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"DiffEnv: generator must be a torch.Generator or None, got {type(generator).__name__}")
        if isinstance(self._reset, torch.Tensor):
            pick = torch.randint(self._reset.shape[0], (self.num_envs,), generator=generator)
            x = self._reset[pick.to(self._reset.device)]
        else:
            x = self._reset(self.num_envs, generator)
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"DiffEnv: reset must return a float tensor (count, n) = ({self.num_envs}, "
                                f"{self.state_dim}), got {type(x).__name__}")
            if x.shape != (self.num_envs, self.state_dim):
                raise ValueError(f"DiffEnv: reset returned shape {tuple(x.shape)}; expected (count, n) = "
                                 f"({self.num_envs}, {self.state_dim})")
            if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
                raise ValueError(f"DiffEnv: reset must return finite float states; got {x.dtype}"
                                 f"{'' if not x.is_floating_point() else ' with NaN or Inf'}")
        return x[self.rank * self.local_envs:(self.rank + 1) * self.local_envs].detach()

    def reset(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reset every copy; returns the observations ``(local_envs, o)``."""
        self.state = self.sample_starts(generator)
        if not isinstance(self._reset, torch.Tensor):        # a tensor's was checked at construction
            check_module_tensors("DiffEnv", {"cost": self.cost, "dynamics": self.dynamics}, self.state,
                                 "reset")
        self.t = torch.zeros(self.local_envs, dtype=torch.long, device=self.state.device)
        self._resolve_bounds(self.state)
        return self.observe(self.state, self.t)

    def _resolve_bounds(self, like):
        if self.lower is None and self.upper is None and any(b is not None for b in self._bounds):
            self.lower, self.upper = check_bounds("DiffEnv", *self._bounds, (self.control_dim,), like, dims="(m,)")

    def detach(self) -> None:
        """Cut the graph behind the current states (the start of a new window of differentiation)."""
        self._require_reset()
        self.state = self.state.detach()

    def step(self, u: torch.Tensor, generator: torch.Generator | None = None) -> Step:
        """Step every copy with actions ``u (local_envs, m)`` (clamped into the bounds); copies whose episode
        ends are reset from ``generator`` (one draw of ``num_envs`` starts every step, used or not, so the
        generator's state does not depend on which copies ended). Returns a :class:`Step`.

        The reward (or the cost's stage and terminal) must return a tensor ``(B,)`` of the states' dtype, as the
        dynamics must return ``(B, n)`` of it (a TypeError or ValueError naming it otherwise).
        ``u`` must be finite: a row with NaN or Inf (a NaN observation gives a NaN action) raises a ValueError
        naming ``u`` and its rows. NaN or Inf from the dynamics or the reward for finite actions raises a
        FloatingPointError naming the rows and which of them gave it. Either way the environment is left as it was
        before the call (states, steps and generator untouched)."""
        self._require_reset()
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"DiffEnv.step: u must be a torch.Tensor (B, m), got {type(u).__name__}")
        if u.dtype != self.state.dtype:
            raise TypeError(f"DiffEnv.step: u is {u.dtype} but the states are {self.state.dtype}; convert it: "
                            f"u.to({self.state.dtype})")
        if u.shape != (self.local_envs, self.control_dim):
            raise ValueError(f"DiffEnv.step: u has shape {tuple(u.shape)}; expected (B, m) = "
                             f"({self.local_envs}, {self.control_dim})")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"DiffEnv.step: generator must be a torch.Generator or None, got "
                            f"{type(generator).__name__}")
        x, raw = self.state, u
        u = clamp(u, self.lower, self.upper)
        x_next = self.dynamics(x, u)
        t = self.t + 1
        truncated = t >= self.episode_length
        if self.cost is not None:
            reward = self.cost.stage(x, u)
            self._check_reward(reward, x, "the cost's stage")
            reward = -reward
            if type(self.cost).terminal is not Cost.terminal and bool(truncated.any()):
                final = self.cost.terminal(x_next)
                self._check_reward(final, x, "the cost's terminal")
                reward = reward - torch.where(truncated, final, 0.0)
        else:
            reward = self.reward_fn(x, u, x_next)
            self._check_reward(reward, x, "reward")
        finite = (torch.isfinite(raw).all(-1), torch.isfinite(x_next).all(-1), torch.isfinite(reward))
        if not bool(torch.stack(finite).all()):              # one host sync, before anything changes
            self._raise_not_finite(*finite)
        if self.terminate_fn is None:
            terminated = torch.zeros_like(truncated)
        else:
            terminated = self.terminate_fn(x_next)
            if not (isinstance(terminated, torch.Tensor) and terminated.dtype == torch.bool
                    and terminated.shape == truncated.shape):
                got = (f"a {terminated.dtype} tensor of shape {tuple(terminated.shape)}"
                       if isinstance(terminated, torch.Tensor) else type(terminated).__name__)
                raise TypeError(f"DiffEnv.step: terminate must return a bool tensor of shape (B,) = "
                                f"({self.local_envs},), got {got}")
            terminated = terminated.to(x.device)
        if self.finite_horizon:
            terminated, truncated = terminated | truncated, torch.zeros_like(truncated)
        truncated = truncated & ~terminated
        done = terminated | truncated
        final_obs = self.observe(x_next, t)
        fresh = self.sample_starts(generator).to(x_next)   # drawn every step: the generator's use does not
        self.t = t                                          # depend on which copies ended (resume, shards)
        if bool(done.any()):
            self.state = torch.where(done.unsqueeze(-1), fresh, x_next)
            self.t = torch.where(done, 0, self.t)
            obs = self.observe(self.state, self.t)
        else:
            self.state, obs = x_next, final_obs
        return Step(obs, reward, terminated, truncated, final_obs, x_next)

    @staticmethod
    def _raise_not_finite(u_ok, x_ok, r_ok):
        """The error for a step with NaN or Inf: the actions' rows first (a bad input), else the model's."""
        def rows(ok):
            bad = (~ok).nonzero().flatten().tolist()
            return f"{bad[:8]}{' ...' if len(bad) > 8 else ''}"
        if not bool(u_ok.all()):
            raise ValueError(f"DiffEnv.step: u contains NaN or Inf in row(s) {rows(u_ok)}; actions must be finite "
                             "(a NaN observation gives a NaN action: check the policy's input)")
        parts = [f"the dynamics gave NaN or Inf states for row(s) {rows(x_ok)}"] if not bool(x_ok.all()) else []
        if not bool(r_ok.all()):
            parts.append(f"the reward (or cost) gave NaN or Inf for row(s) {rows(r_ok)}")
        raise FloatingPointError(f"DiffEnv.step: {'; '.join(parts)}, for finite actions u; check the model there "
                                 "(or its inputs: huge states or controls overflow)")

    def _require_reset(self):
        if self.state is None:
            raise RuntimeError("DiffEnv: call reset() before step() or detach()")
