"""Examples of a user's own models wired into alchemist-pl by config alone (README "Extending")."""
