// usage: node triage-list.mjs SUITE_DIR edgeshard.json nginx.json
// Every test that is not a plain pass/Y/N for the first file: its class on the results page,
// its own result ignoring dependencies, and nginx's class.
import path from 'path'
import fs from 'fs'
const suiteDir = path.resolve(process.argv[2])
const [a, b] = process.argv.slice(3).map(f => JSON.parse(fs.readFileSync(f)))
const tests = (await import(path.join(suiteDir, 'tests/index.mjs'))).default
tests.push((await import(path.join(suiteDir, 'tests/surrogate-control.mjs'))).default)
const d = await import(path.join(suiteDir, 'lib/display.mjs'))
for (const s of tests) for (const t of s.tests) {
  const cls = d.determineTestResult(tests, t.id, a)[2]
  if (['✅', 'Y', 'N', '-'].includes(cls)) continue
  const own = d.determineTestResult(tests, t.id, a, false)[2]
  const r = a[t.id]
  console.log([cls, own, d.determineTestResult(tests, t.id, b)[2], t.kind || 'required', t.id, Array.isArray(r) ? r[1] : ''].join('\t'))
}
