// The policy semantics of the auth file, as zot defines them: globs (`*` within one
// component, `**` across), the longest matching pattern deciding alone, users and groups,
// defaultPolicy for signed-in users only, anonymousPolicy for anonymous only, and
// adminPolicy everywhere. Fast unit tests; test/registry/auth.test.ts drives the same
// policies through HTTP.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Policy, globRegExp } from '../../src/registry/auth/policy.js';

test('globs: * stays within a component, ** crosses them, ? is one character', () => {
  const m = (p: string, s: string) => globRegExp(p).test(s);
  assert.ok(m('team/*', 'team/app'));
  assert.ok(!m('team/*', 'team/app/sub'));
  assert.ok(m('team/**', 'team/app/sub'));
  assert.ok(m('team/**', 'team'));
  assert.ok(!m('team/**', 'teamx/app'));
  assert.ok(m('**', 'anything/at/all'));
  assert.ok(m('**/cache', 'ci/cache'));
  assert.ok(m('**/cache', 'cache'));
  assert.ok(!m('**/cache', 'ci/cachex'));
  assert.ok(m('app-?', 'app-1'));
  assert.ok(!m('app-?', 'app-12'));
  // A dot is a dot, not any character.
  assert.ok(!m('a.b', 'axb'));
});

test('the longest matching pattern decides alone; users, groups, default, anonymous and admin', () => {
  const p = new Policy({
    groups: { devs: { users: ['alice', 'dan'] }, ops: { users: ['olga'] } },
    repositories: {
      '**': { defaultPolicy: ['read'], anonymousPolicy: ['read'] },
      'team/**': { policies: [{ groups: ['devs'], actions: ['read', 'create'] }, { users: ['bob'], actions: ['read'] }] },
      'team/private/**': { policies: [{ users: ['alice'], actions: ['read'] }] },
    },
    adminPolicy: { groups: ['ops'], actions: ['read', 'create', 'update', 'delete'] },
  });
  const acts = (u: string | undefined, r: string) => [...p.actions(u, r)].sort();
  assert.deepEqual(acts(undefined, 'misc/x'), ['read']);
  assert.deepEqual(acts('zed', 'misc/x'), ['read']);
  assert.deepEqual(acts('dan', 'team/app'), ['create', 'read']);
  assert.deepEqual(acts('bob', 'team/app'), ['read']);
  // team/** matched: `**`'s anonymous and default reads do not reach in.
  assert.deepEqual(acts(undefined, 'team/app'), []);
  assert.deepEqual(acts('zed', 'team/app'), []);
  assert.deepEqual(acts('dan', 'team/private/k'), []);
  assert.deepEqual(acts('alice', 'team/private/k'), ['read']);
  assert.deepEqual(acts('olga', 'team/private/k'), ['create', 'delete', 'read', 'update']);
  assert.ok(p.isAdmin('olga'));
  assert.ok(!p.isAdmin('alice'));
  assert.ok(!p.isAdmin(undefined));
});
