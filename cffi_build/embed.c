/* The bundle's own executable: starts the bundled Python directly and runs kiwi.
 *
 * cffi_build/launcher.c execs this from the unpacked cache folder, which holds
 *   kiwi                   this program (linked with rpath $ORIGIN/_internal)
 *   _internal/             every Python module kiwi uses as a plain .pyc file,
 *                          kiwi/kiwi-init, kiwi/kiwi-exec, libpython and the
 *                          shared libraries it and the extension modules need
 *   _internal/python3.X/lib-dynload/  the stdlib's extension modules
 * (kiwi.spec lays it out: PyInstaller only collects). No PyInstaller
 * bootloader runs: no re-exec, no frozen importer, no archive to open, just an
 * isolated interpreter with a two-entry sys.path, so start-up costs what
 * Python's own start costs. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* kiwi/bundle_main.py: kiwi.cli.main, then an exit without finalization. */
#define MAIN_CODE "from kiwi.bundle_main import run\nrun()\n"

static void fail(const char *what, PyStatus status)
{
    fprintf(stderr, "kiwi: cannot start its Python (%s: %s); download or build kiwi again\n", what,
            status.err_msg ? status.err_msg : "?");
    exit(1);
}

static void check(const char *what, PyStatus status)
{
    if (PyStatus_Exception(status))
        fail(what, status);
}

/* dir/sub as a wide string in the search path. */
static void add_path(PyConfig *config, const char *dir, const char *sub)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, sub) >= (int)sizeof path)
        fail("search path", PyStatus_Error("too long"));
    wchar_t *wide = Py_DecodeLocale(path, NULL);
    if (!wide)
        fail("search path", PyStatus_NoMemory());
    check("search path", PyWideStringList_Append(&config->module_search_paths, wide));
    PyMem_RawFree(wide);
}

int main(int argc, char **argv)
{
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        perror("kiwi: cannot find its own file through /proc/self/exe");
        return 1;
    }
    self[len] = 0;
    char folder[PATH_MAX];
    memcpy(folder, self, (size_t)len + 1);
    char *home = dirname(folder);   /* the cache folder */

    /* UTF-8 mode, as the PyInstaller bootloader had it: argv, paths and stdio are
     * UTF-8 whatever the locale (an isolated preconfig would leave it ASCII in
     * the C locale that sudo and service managers give). */
    PyPreConfig preconfig;
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = 1;
    check("pre-initialize", Py_PreInitialize(&preconfig));

    PyConfig config;
    /* Isolated: no PYTHON* variables, no user site, no cwd on sys.path. */
    PyConfig_InitIsolatedConfig(&config);
    config.install_signal_handlers = 1;  /* as python3: Ctrl-C raises KeyboardInterrupt, SIGPIPE ignored */
    config.site_import = 0;
    config.write_bytecode = 0;
    config.optimization_level = 2;
    config.parse_argv = 0;          /* argv is kiwi's, not Python options */
    config.pathconfig_warnings = 0; /* no landmark files: the search path is given */
    config.module_search_paths_set = 1;
    add_path(&config, home, "_internal");
    add_path(&config, home, "_internal/python" Py_STRINGIFY(PY_MAJOR_VERSION) "." Py_STRINGIFY(PY_MINOR_VERSION) "/lib-dynload");
    check("arguments", PyConfig_SetBytesArgv(&config, argc, argv));
    check("home", PyConfig_SetBytesString(&config, &config.home, home));
    check("executable", PyConfig_SetBytesString(&config, &config.executable, self));
    check("program", PyConfig_SetString(&config, &config.run_command, L"" MAIN_CODE));
    PyStatus status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        if (PyStatus_IsExit(status))
            return status.exitcode;
        fail("initialize", status);
    }
    return Py_RunMain();
}
