"""The fleet: SSH access to devices, agent deployment, tunnels, device locks and health checks."""
