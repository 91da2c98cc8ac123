// usage: node counts-nodeps.mjs SUITE_DIR results.json...  -- counts each test's own result (dependencies ignored)
import path from 'path'
import fs from 'fs'
const suiteDir = path.resolve(process.argv[2])
const tests = (await import(path.join(suiteDir, 'tests/index.mjs'))).default
tests.push((await import(path.join(suiteDir, 'tests/surrogate-control.mjs'))).default)
const d = await import(path.join(suiteDir, 'lib/display.mjs'))
for (const f of process.argv.slice(3)) {
  const r = JSON.parse(fs.readFileSync(f)); const c = {}
  for (const s of tests) for (const t of s.tests) { const k = d.determineTestResult(tests, t.id, r, false)[2]; c[k] = (c[k] || 0) + 1 }
  console.log(f, JSON.stringify(c))
}
