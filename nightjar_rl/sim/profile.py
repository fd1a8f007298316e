"""The hardware profile, kept at its old path for existing imports: the oracle and SSSD policies
read it as well as the simulator, so it lives in `nightjar_rl.hardware`."""

from nightjar_rl.hardware import PROFILE_FORMAT, PROFILE_VERSION, HardwareProfile, ProfileError

__all__ = ["PROFILE_FORMAT", "PROFILE_VERSION", "HardwareProfile", "ProfileError"]
