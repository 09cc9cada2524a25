// Nix settings for tests: offline, no sandbox. Users' settings are never forced.
export const NIX_TEST_ENV = {
  ...process.env,
  NIX_CONFIG: 'substituters =\nsandbox = false',
};
