"""Small models the dynamics tests share (the full model zoo lives in dynamics.analytic)."""
import torch

import dynamics


class PendulumODE(dynamics.ContinuousDynamics):
    """Gymnasium Pendulum-v1's vector field (theta = 0 upright): the ODE behind P2."""

    positions = (0,)

    def __init__(self, g=10.0, m=1.0, l=1.0):
        super().__init__(2, 1)
        self.g = torch.nn.Parameter(torch.tensor(g, dtype=torch.float64))
        self.m = torch.nn.Parameter(torch.tensor(m, dtype=torch.float64))
        self.l = torch.nn.Parameter(torch.tensor(l, dtype=torch.float64))

    def derivative(self, x, u, t=None):
        th, thd = x[..., 0], x[..., 1]
        thdd = 3 * self.g / (2 * self.l) * torch.sin(th) + 3.0 / (self.m * self.l ** 2) * u[..., 0]
        return torch.stack([thd, thdd], -1)


class Coupled(dynamics.Dynamics):
    """A nonlinear discrete map that mixes every state and control, time-varying."""

    time_varying = True

    def __init__(self, n=3, m=2):
        super().__init__(n, m)
        g = torch.Generator().manual_seed(0)
        self.W = torch.nn.Parameter(torch.randn(n, n + m, generator=g, dtype=torch.float64) / 2)

    def forward(self, x, u, t=None):
        tau = torch.cat([x, u], -1)
        return x + 0.1 * torch.tanh(tau @ self.W.mT) * (1 + (t or 0)) + 0.05 * x * u.sum(-1, keepdim=True) ** 2


class PendulumBreaks(dynamics.ContinuousDynamics):
    """P2's pendulum, NaN where ``|theta| > 4`` (a simulator blowing up, a model undefined there); continuous, so
    that collocation takes it too."""

    positions, default_dt, default_method = (0,), 0.05, "semi_implicit_euler"

    def __init__(self):
        super().__init__(2, 1)
        self.pendulum = dynamics.Pendulum()

    def derivative(self, x, u, t=None):
        return torch.where(x[..., :1].abs() > 4, float("nan"), self.pendulum.derivative(x, u, t))
