"""A small company knowledge base written for the tests: Chinese and English documents, two
near-duplicates (a draft and the final leave policy), and an expense policy that changes between
two ingests. Each question is labelled by hand with the documents that answer it."""

from __future__ import annotations

LEAVE = """# 员工手册：休假制度

## 年假
正式员工每年享有十五天带薪年假。年假需通过人事系统提前两周申请，并由直属经理审批。
当年未休完的年假最多可结转五天到次年第一季度，逾期作废。

## 病假
病假每年十天，全额带薪。连续病假超过三天需提交医院证明。

## 婚假与产假
员工结婚可享受三天婚假。女员工产假为一百五十八天，男员工陪产假为十五天。
"""

LEAVE_DRAFT = """# 员工手册：休假制度（草稿）

## 年假
正式员工每年享有十五天带薪年假。年假需通过人事系统提前两周申请，并由直属经理审批。
当年未休完的年假最多可结转五天到次年。

## 病假
病假每年十天，全额带薪。连续病假超过三天需提交医院证明。
"""

EXPENSES_V1 = """# Travel and Expense Policy

## Reimbursement
Employees are reimbursed for business travel within 30 days of submitting receipts.
Submit receipts by email to the finance team.

## Hotels
Hotel rooms are capped at 600 yuan per night in tier-one cities and 400 yuan elsewhere.

## Meals
Meals during business trips are covered up to 150 yuan per day.
"""

EXPENSES_V2 = """# Travel and Expense Policy

## Reimbursement
Employees are reimbursed for business travel within 10 working days of submitting receipts.
Receipts are submitted through the new Huiyuan expense portal; email submissions are no longer accepted.

## Hotels
Hotel rooms are capped at 600 yuan per night in tier-one cities and 400 yuan elsewhere.

## Meals
Meals during business trips are covered up to 150 yuan per day.
"""

SERVER_ROOM = """<html><head><title>机房管理规范</title><style>body{color:#333}</style></head><body>
<nav>首页 | 制度 | 联系我们</nav>
<h1>机房管理规范</h1>
<h2>环境要求</h2>
<p>服务器机房的温度应保持在十八到二十七摄氏度之间，相对湿度保持在百分之四十到百分之六十。</p>
<h2>出入管理</h2>
<p>进入机房必须刷门禁卡并在登记簿上签字，访客需由运维人员全程陪同。</p>
<h2>消防</h2>
<p>机房使用七氟丙烷气体灭火系统，严禁使用水基灭火器。</p>
<footer>版权所有</footer>
</body></html>
"""

PASSWORDS = """Password and Account Security

Passwords must be at least 12 characters long and must be changed every 90 days.
Multi-factor authentication is required for email, VPN and the source code repositories.
Accounts are locked for 30 minutes after five failed login attempts.
Never share a password with colleagues, including your manager or the IT helpdesk.
"""

VPN = """# 远程办公与 VPN

## 申请
远程办公需填写远程办公申请表，经部门负责人批准后由 IT 部开通 VPN 账号。

## Client
The company VPN uses the WireGuard client. Install it from the internal software center,
then import the configuration file that IT sends to your work email.

## 注意事项
在公共 Wi-Fi 下必须先连接 VPN 再访问内部系统。VPN 连接空闲两小时后自动断开。
"""

RETENTION = """# 数据保留政策

客户合同及相关往来邮件保存十年。财务凭证保存十五年，按照会计档案管理办法执行。
员工离职后，其邮箱数据保留九十天后删除。系统访问日志保留一百八十天，用于安全审计。
"""

ONBOARDING = """# New Employee Onboarding

## First day
On your first day, collect your laptop and badge from the front desk on the 3rd floor.
Your buddy will give you a tour of the office and introduce your team.

## First week
Complete the mandatory security awareness training within your first five working days.
Set up your development environment by following the engineering handbook.
"""

WARRANTY = """# 产品保修条款

本公司智能门锁自购买之日起保修两年，电池及外壳划痕不在保修范围内。
保修期内产品出现非人为质量问题，可免费维修或更换。客户需提供购买发票和产品序列号。
售后服务热线为 400-820-1234，工作日九点至十八点提供服务。
"""

INCIDENTS = """Incident Response Procedure

Severity 1 incidents (full outage of a customer-facing service) must be acknowledged within 15 minutes
by the on-call engineer and escalated to the incident commander.
A written post-mortem is due within five working days of resolution and is reviewed at the weekly operations meeting.
Customer communication during an incident is handled only by the support lead.
"""

CANTEEN = """# 食堂与班车

员工食堂位于二号楼一层，午餐供应时间为十一点半至一点。每位员工每月有六百元餐补，直接充入工卡。
公司班车早上七点半从地铁站发车，晚上六点半从公司返回。
"""

DOCUMENTS = {
    "handbook/leave.md": LEAVE,
    "handbook/leave-draft.md": LEAVE_DRAFT,
    "finance/expenses.md": EXPENSES_V1,
    "it/server-room.html": SERVER_ROOM,
    "it/passwords.txt": PASSWORDS,
    "it/vpn.md": VPN,
    "legal/retention.md": RETENTION,
    "hr/onboarding.md": ONBOARDING,
    "support/warranty.md": WARRANTY,
    "ops/incidents.txt": INCIDENTS,
    "facilities/canteen.md": CANTEEN,
}
UPDATED = ("finance/expenses.md", EXPENSES_V2)
LEAVE_DOCS = ("handbook/leave.md", "handbook/leave-draft.md")

# (question, the documents that answer it)
QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("员工每年有多少天带薪年假？", LEAVE_DOCS),
    ("How many days of paid annual leave do employees get?", LEAVE_DOCS),
    ("没休完的年假可以结转吗", LEAVE_DOCS),
    ("病假超过三天需要什么材料", LEAVE_DOCS),
    ("男员工陪产假几天？", ("handbook/leave.md",)),
    ("How long does reimbursement of travel expenses take?", ("finance/expenses.md",)),
    ("Which portal do I use to submit receipts?", ("finance/expenses.md",)),
    ("出差住酒店每晚报销上限是多少", ("finance/expenses.md",)),
    ("机房温度要求是多少", ("it/server-room.html",)),
    ("What fire suppression does the server room use?", ("it/server-room.html",)),
    ("访客进入机房有什么规定", ("it/server-room.html",)),
    ("How often must I change my password?", ("it/passwords.txt",)),
    ("账户登录失败几次会被锁定？", ("it/passwords.txt",)),
    ("Which VPN client does the company use?", ("it/vpn.md",)),
    ("在咖啡厅用公共网络办公要注意什么", ("it/vpn.md",)),
    ("客户合同要保存多久？", ("legal/retention.md",)),
    ("How long are access logs kept?", ("legal/retention.md",)),
    ("Where do I pick up my laptop on the first day?", ("hr/onboarding.md",)),
    ("新员工安全培训需要在多久内完成", ("hr/onboarding.md",)),
    ("智能门锁保修多长时间", ("support/warranty.md",)),
    ("What is the after-sales service hotline number?", ("support/warranty.md",)),
    ("How quickly must a severity 1 incident be acknowledged?", ("ops/incidents.txt",)),
    ("故障复盘报告什么时候交", ("ops/incidents.txt",)),
    ("食堂午饭几点开始", ("facilities/canteen.md",)),
    ("What time does the company shuttle bus leave the subway station?", ("facilities/canteen.md",)),
]
